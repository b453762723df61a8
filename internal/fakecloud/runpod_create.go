package fakecloud

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strings"
)

// apiError is a RunPod REST failure: status, detail and the schema violations.
type apiError struct {
	status int
	detail string
	errs   []string
}

func badRequest(format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, detail: fmt.Sprintf(format, args...)}
}

// createPodRequest is RunPod's CreatePodRequest, once it passed schema validation.
type createPodRequest struct {
	Name             string            `json:"name"`
	Image            string            `json:"image"`
	GPU              *createGPU        `json:"gpu"`
	CPU              json.RawMessage   `json:"cpu"`
	Cloud            string            `json:"cloud"`
	DataCenterIDs    []string          `json:"dataCenterIds"`
	Ports            []string          `json:"ports"`
	Env              map[string]string `json:"env"`
	Disk             *int              `json:"disk"`
	Mounts           *createMounts     `json:"mounts"`
	Args             string            `json:"args"`
	Registry         *string           `json:"registry"`
	TemplateID       *string           `json:"templateId"`
	StartJupyter     bool              `json:"startJupyter"`
	StartSSH         bool              `json:"startSsh"`
	GlobalNetworking bool              `json:"globalNetworking"`

	rawMounts json.RawMessage // mounts as sent, echoed in the pod
}

type createGPU struct {
	ID                  string   `json:"id"`
	Count               *int     `json:"count"`
	AllowedCudaVersions []string `json:"allowedCudaVersions"`
	MinCudaVersion      *string  `json:"minCudaVersion"`
}

type createMounts struct {
	Persistent *json.RawMessage  `json:"persistent"`
	Network    []json.RawMessage `json:"network"`
}

var cudaPattern = regexp.MustCompile(`^\d+\.\d+$`)

// schema is a small JSON Schema subset, enough for the bodies RunPod validates.
type schema struct {
	typ        string // object, array, string, integer, number, boolean, map (object of strings)
	nullable   bool
	props      map[string]*schema // object: the allowed properties
	required   []string
	items      *schema
	minimum    *int
	minLength  int
	maxItems   int
	enum       []string
	pattern    *regexp.Regexp
	openObject bool // object: any properties (not checked)
}

func intMin(n int) *int { return &n }

var podMountsSchema = &schema{typ: "object", props: map[string]*schema{
	"persistent": {typ: "object", required: []string{"size", "path"}, props: map[string]*schema{
		"size": {typ: "integer", minimum: intMin(10)}, "path": {typ: "string"},
	}},
	"network": {typ: "array", maxItems: 1, items: &schema{typ: "object", required: []string{"volumeId", "path"}, props: map[string]*schema{
		"volumeId": {typ: "string"}, "path": {typ: "string"},
	}}},
}}

var createPodSchema = &schema{typ: "object", required: []string{"name"}, props: map[string]*schema{
	"name":  {typ: "string", minLength: 1},
	"image": {typ: "string"},
	"gpu": {typ: "object", required: []string{"id"}, props: map[string]*schema{
		"id":                  {typ: "string"},
		"count":               {typ: "integer", minimum: intMin(1)},
		"allowedCudaVersions": {typ: "array", items: &schema{typ: "string", pattern: cudaPattern}},
		"minCudaVersion":      {typ: "string", pattern: cudaPattern},
	}},
	"cpu": {typ: "object", required: []string{"id", "vcpuCount"}, props: map[string]*schema{
		"id": {typ: "string", minLength: 1}, "vcpuCount": {typ: "integer", minimum: intMin(2)},
	}},
	"cloud":            {typ: "string", enum: []string{"SECURE", "COMMUNITY"}},
	"dataCenterIds":    {typ: "array", items: &schema{typ: "string"}},
	"ports":            {typ: "array", items: &schema{typ: "string"}},
	"env":              {typ: "map"},
	"disk":             {typ: "integer", minimum: intMin(1)},
	"mounts":           podMountsSchema,
	"args":             {typ: "string"},
	"registry":         {typ: "string", nullable: true},
	"templateId":       {typ: "string", minLength: 1},
	"startJupyter":     {typ: "boolean"},
	"startSsh":         {typ: "boolean"},
	"globalNetworking": {typ: "boolean"},
}}

var podActionSchema = &schema{typ: "object", required: []string{"action"}, props: map[string]*schema{
	"action": {typ: "string", enum: []string{"start", "stop", "restart", "terminate"}},
}}

// jsonKind names the JSON type of a value decoded with UseNumber.
func jsonKind(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return "string"
	case bool:
		return "boolean"
	case json.Number:
		if strings.ContainsAny(x.String(), ".eE") {
			return "number"
		}
		return "integer"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "unknown"
}

// validate checks v against sc and returns the violations, each "<path>: <problem>".
func (sc *schema) validate(path string, v any) []string {
	kind := jsonKind(v)
	if kind == "null" && sc.nullable {
		return nil
	}
	want := sc.typ
	if want == "map" {
		want = "object"
	}
	if kind != want && !(want == "number" && kind == "integer") {
		return []string{fmt.Sprintf("%s: expected %s, but got %s", path, want, kind)}
	}
	switch sc.typ {
	case "object":
		return sc.validateObject(path, v.(map[string]any))
	case "map":
		var errs []string
		for _, k := range slices.Sorted(maps.Keys(v.(map[string]any))) {
			if kk := jsonKind(v.(map[string]any)[k]); kk != "string" {
				errs = append(errs, fmt.Sprintf("%s.%s: expected string, but got %s", path, k, kk))
			}
		}
		return errs
	case "array":
		return sc.validateArray(path, v.([]any))
	case "string":
		return sc.validateString(path, v.(string))
	case "integer":
		var n int64
		if _, err := fmt.Sscan(v.(json.Number).String(), &n); err != nil {
			return []string{fmt.Sprintf("%s: expected integer, but got number", path)}
		}
		if sc.minimum != nil && n < int64(*sc.minimum) {
			return []string{fmt.Sprintf("%s: minimum: got %d, want %d", path, n, *sc.minimum)}
		}
	}
	return nil
}

func (sc *schema) validateObject(path string, obj map[string]any) []string {
	var errs, extra []string
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		if _, ok := sc.props[k]; !ok && !sc.openObject {
			extra = append(extra, "'"+k+"'")
		}
	}
	if len(extra) > 0 {
		errs = append(errs, fmt.Sprintf("%s: additional properties %s not allowed", path, strings.Join(extra, ", ")))
	}
	for _, k := range sc.required {
		if _, ok := obj[k]; !ok {
			errs = append(errs, fmt.Sprintf("%s: missing property '%s'", path, k))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(sc.props)) {
		if v, ok := obj[k]; ok {
			errs = append(errs, sc.props[k].validate(path+"."+k, v)...)
		}
	}
	return errs
}

func (sc *schema) validateArray(path string, arr []any) []string {
	var errs []string
	if sc.maxItems > 0 && len(arr) > sc.maxItems {
		errs = append(errs, fmt.Sprintf("%s: maxItems: got %d, want %d", path, len(arr), sc.maxItems))
	}
	if sc.items != nil {
		for i, item := range arr {
			errs = append(errs, sc.items.validate(fmt.Sprintf("%s[%d]", path, i), item)...)
		}
	}
	return errs
}

func (sc *schema) validateString(path, s string) []string {
	switch {
	case len(s) < sc.minLength:
		return []string{fmt.Sprintf("%s: minLength: got %d, want %d", path, len(s), sc.minLength)}
	case len(sc.enum) > 0 && !slices.Contains(sc.enum, s):
		return []string{fmt.Sprintf("%s: value must be one of '%s'", path, strings.Join(sc.enum, "', '"))}
	case sc.pattern != nil && !sc.pattern.MatchString(s):
		return []string{fmt.Sprintf("%s: '%s' does not match pattern '%s'", path, s, sc.pattern)}
	}
	return nil
}

// decodeValidated decodes body into out after checking it against sc; a body that is not
// JSON is a 400, one that breaks the schema a 422 listing the violations.
func decodeValidated(body []byte, sc *schema, out any) *apiError {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil || dec.More() {
		return badRequest("request body is not valid JSON")
	}
	if errs := sc.validate("$", v); len(errs) > 0 {
		return &apiError{status: http.StatusUnprocessableEntity, detail: "Request validation failed.", errs: errs}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return &apiError{status: http.StatusUnprocessableEntity, detail: "Request validation failed.", errs: []string{"$: " + err.Error()}}
	}
	return nil
}

// parseCreatePod validates a create body as RunPod does: the schema (422), then the rules
// across fields and the catalogue (400), then templates (404).
func parseCreatePod(body []byte) (createPodRequest, *apiError) {
	var req createPodRequest
	if apiErr := decodeValidated(body, createPodSchema, &req); apiErr != nil {
		return req, apiErr
	}
	var fields map[string]json.RawMessage
	_ = json.Unmarshal(body, &fields) // decodeValidated checked it is an object
	if _, ok := fields["image"]; !ok && req.TemplateID == nil {
		return req, &apiError{status: http.StatusUnprocessableEntity, detail: "Request validation failed.", errs: []string{"$: missing property 'image'"}}
	}
	req.rawMounts = fields["mounts"]
	if apiErr := req.checkRules(); apiErr != nil {
		return req, apiErr
	}
	if req.TemplateID != nil {
		return req, &apiError{status: http.StatusNotFound, detail: fmt.Sprintf("template %q not found", *req.TemplateID)}
	}
	return req, nil
}

func (req *createPodRequest) checkRules() *apiError {
	switch {
	case (req.GPU == nil) == (req.CPU == nil):
		return badRequest("exactly one of gpu or cpu must be set")
	case req.CPU != nil:
		return badRequest("CPU pods are not offered by this fake; set gpu")
	case len(req.GPU.AllowedCudaVersions) > 0 && req.GPU.MinCudaVersion != nil:
		return badRequest("gpu.allowedCudaVersions and gpu.minCudaVersion are mutually exclusive")
	case req.Mounts != nil && req.Mounts.Persistent != nil && len(req.Mounts.Network) > 0:
		return badRequest("mounts.persistent and mounts.network are mutually exclusive")
	}
	g, ok := findGPU(req.GPU.ID)
	if !ok {
		return badRequest("GPU type %q is not a known GPU type id (see GET /v2/catalog/gpus)", req.GPU.ID)
	}
	if req.GPU.Count != nil && *req.GPU.Count > g.MaxCount {
		return badRequest("gpu.count %d exceeds the %d GPUs of the largest %s machine", *req.GPU.Count, g.MaxCount, g.ID)
	}
	for _, p := range req.Ports {
		if _, proto, ok := strings.Cut(p, "/"); !ok || (proto != "tcp" && proto != "http") {
			return badRequest("port %q must be <port>/tcp or <port>/http", p)
		}
	}
	return nil
}

// setup turns a valid create body into the pod to make.
func (req *createPodRequest) setup() podSetup {
	g, _ := findGPU(req.GPU.ID)
	count := 1
	if req.GPU.Count != nil {
		count = *req.GPU.Count
	}
	cloud := req.Cloud
	if cloud == "" {
		cloud = "SECURE"
	}
	price := g.Secure
	if cloud == "COMMUNITY" {
		price = g.Community
	}
	p := pod{
		image: req.Image, args: req.Args, disk: defaultDisk, ports: req.Ports, env: req.Env,
		registry: req.Registry, mounts: json.RawMessage(`{}`), gpuID: g.ID, gpuCount: count,
		cloud: cloud, dataCenterID: defaultDataCenter, price: roundPrice(price * float64(count)),
		globalNetworking: req.GlobalNetworking,
	}
	if req.Disk != nil {
		p.disk = *req.Disk
	}
	if len(req.rawMounts) > 0 {
		p.mounts = req.rawMounts
	}
	if len(req.DataCenterIDs) > 0 {
		p.dataCenterID = req.DataCenterIDs[0]
	}
	p.normalise()
	return podSetup{name: req.Name, pod: p}
}

func (p *pod) normalise() {
	if p.ports == nil {
		p.ports = []string{}
	}
	if p.env == nil {
		p.env = map[string]string{}
	}
}

// roundPrice rounds a price in USD to a tenth of a cent, as RunPod quotes them.
func roundPrice(usd float64) float64 { return math.Round(usd*1000) / 1000 }

// parsePodAction reads the body of POST /v2/pods/{id}/action.
func parsePodAction(r io.Reader) (string, *apiError) {
	body, err := io.ReadAll(r)
	if err != nil {
		return "", badRequest("could not read request body")
	}
	var req struct {
		Action string `json:"action"`
	}
	if apiErr := decodeValidated(body, podActionSchema, &req); apiErr != nil {
		return "", apiErr
	}
	return req.Action, nil
}
