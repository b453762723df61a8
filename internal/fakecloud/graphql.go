package fakecloud

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
)

// graphQLOperations are the root fields the fake answers, most specific first: the query
// text is not parsed, the first of these that appears as a word names the operation.
var graphQLOperations = []string{"podRentInterruptable", "podTerminate", "gpuTypes", "pod"}

func graphQLOperation(query string) string {
	for _, op := range graphQLOperations {
		if regexp.MustCompile(`\b` + op + `\b`).MatchString(query) {
			return op
		}
	}
	return ""
}

type graphQLRequest struct {
	Query     string                     `json:"query"`
	Variables map[string]json.RawMessage `json:"variables"`
}

// gqlFailure is a GraphQL error answered with HTTP 200 and data null.
type gqlFailure string

func (s *Server) graphQL(w http.ResponseWriter, r *http.Request) {
	var req graphQLRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Query == "" {
		writeGraphQLError(w, http.StatusBadRequest, "POST body must be JSON with a query string")
		return
	}
	var (
		data    any
		failure gqlFailure
	)
	switch op := graphQLOperation(req.Query); op {
	case "podRentInterruptable":
		data, failure = s.gqlRentInterruptable(req.Variables)
		if failure == "" && s.cfg.Faults.CreateFailsButCreates {
			writeGraphQLError(w, http.StatusInternalServerError, "Something went wrong. Please try again later or contact support.")
			return
		}
	case "podTerminate":
		data, failure = s.gqlTerminate(req.Variables)
	case "gpuTypes":
		data, failure = s.gqlGPUTypes(req.Variables)
	case "pod":
		data, failure = s.gqlPod(req.Variables)
	default:
		failure = "the fake answers only gpuTypes, podRentInterruptable, podTerminate and pod"
	}
	if failure != "" {
		writeGraphQLError(w, http.StatusOK, string(failure))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": data})
}

// decodeInput decodes variables[name] into out, refusing fields not in allowed.
func decodeInput(vars map[string]json.RawMessage, name, typeName string, allowed []string, out any) gqlFailure {
	raw, ok := vars[name]
	if !ok || string(raw) == "null" {
		return gqlFailure(fmt.Sprintf("Variable \"$%s\" of required type \"%s!\" was not provided.", name, typeName))
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return gqlFailure(fmt.Sprintf("Variable \"$%s\" got invalid value; expected an object.", name))
	}
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		if !slices.Contains(allowed, k) {
			return gqlFailure(fmt.Sprintf("Variable \"$%s\" got invalid value; Field \"%s\" is not defined by type \"%s\".", name, k, typeName))
		}
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return gqlFailure(fmt.Sprintf("Variable \"$%s\" got invalid value; %v", name, err))
	}
	return ""
}

type gqlGPUType struct {
	ID             string         `json:"id"`
	DisplayName    string         `json:"displayName"`
	MemoryInGb     int            `json:"memoryInGb"`
	SecurePrice    float64        `json:"securePrice"`
	CommunityPrice float64        `json:"communityPrice"`
	LowestPrice    gqlLowestPrice `json:"lowestPrice"`
}

type gqlLowestPrice struct {
	MinimumBidPrice      float64 `json:"minimumBidPrice"`
	UninterruptablePrice float64 `json:"uninterruptablePrice"`
	StockStatus          string  `json:"stockStatus"`
}

func (s *Server) gqlGPUTypes(vars map[string]json.RawMessage) (any, gqlFailure) {
	var id string
	if raw, ok := vars["id"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &id); err != nil {
			return nil, "Variable \"$id\" got invalid value; expected a string."
		}
	}
	if raw, ok := vars["gpuCount"]; ok && string(raw) != "null" {
		var n int
		if err := json.Unmarshal(raw, &n); err != nil || n < 1 {
			return nil, "Variable \"$gpuCount\" got invalid value; expected a positive Int."
		}
	}
	stock := "High"
	if s.cfg.Faults.NoCapacity {
		stock = "None"
	}
	out := []gqlGPUType{}
	for _, g := range runpodGPUs {
		if id != "" && g.ID != id {
			continue
		}
		out = append(out, gqlGPUType{
			ID: g.ID, DisplayName: g.Name, MemoryInGb: g.Memory,
			SecurePrice: g.Secure, CommunityPrice: g.Community,
			LowestPrice: gqlLowestPrice{MinimumBidPrice: g.minimumBid(), UninterruptablePrice: g.Community, StockStatus: stock},
		})
	}
	return map[string]any{"gpuTypes": out}, ""
}

// rentInput is PodRentInterruptableInput, the fields the fake takes.
type rentInput struct {
	BidPerGPU         *float64 `json:"bidPerGpu"`
	CloudType         string   `json:"cloudType"`
	GPUCount          *int     `json:"gpuCount"`
	GPUTypeID         string   `json:"gpuTypeId"`
	Name              string   `json:"name"`
	ImageName         string   `json:"imageName"`
	DockerArgs        string   `json:"dockerArgs"`
	Ports             string   `json:"ports"`
	ContainerDiskInGb *int     `json:"containerDiskInGb"`
	VolumeInGb        *int     `json:"volumeInGb"`
	VolumeMountPath   string   `json:"volumeMountPath"`
	Env               []struct {
		Key   string `json:"key"`
		Value string `json:"value"`
	} `json:"env"`
	DataCenterID    *string `json:"dataCenterId"`
	StartSSH        bool    `json:"startSsh"`
	SupportPublicIP bool    `json:"supportPublicIp"`
}

var rentInputFields = []string{
	"bidPerGpu", "cloudType", "gpuCount", "gpuTypeId", "name", "imageName", "dockerArgs",
	"ports", "containerDiskInGb", "volumeInGb", "volumeMountPath", "env", "dataCenterId",
	"startSsh", "supportPublicIp",
}

func (s *Server) gqlRentInterruptable(vars map[string]json.RawMessage) (any, gqlFailure) {
	var in rentInput
	if f := decodeInput(vars, "input", "PodRentInterruptableInput", rentInputFields, &in); f != "" {
		return nil, f
	}
	g, f := in.check()
	if f != "" {
		return nil, f
	}
	if s.cfg.Faults.NoCapacity {
		return nil, noCapacityDetail
	}
	m, err := s.createMachineFromPod(in.setup(g))
	if err != nil {
		s.log.Error("rent interruptible pod", "err", err)
		return nil, "Something went wrong. Please try again later or contact support."
	}
	return map[string]any{"podRentInterruptable": map[string]any{
		"id": m.id, "name": m.name, "costPerHr": m.pod.price,
		"machineId": m.pod.machineID, "desiredStatus": "RUNNING",
	}}, ""
}

// check applies RunPod's rules to a spot create and returns its GPU type.
func (in *rentInput) check() (gpuType, gqlFailure) {
	switch {
	case in.BidPerGPU == nil:
		return gpuType{}, "Field \"bidPerGpu\" of required type \"Float!\" was not provided."
	case in.GPUTypeID == "":
		return gpuType{}, "gpuTypeId is required"
	case in.CloudType != "" && !slices.Contains([]string{"SECURE", "COMMUNITY", "ALL"}, in.CloudType):
		return gpuType{}, gqlFailure(fmt.Sprintf("Value %q does not exist in \"CloudTypeEnum\" enum.", in.CloudType))
	}
	g, ok := findGPU(in.GPUTypeID)
	if !ok {
		return gpuType{}, gqlFailure(fmt.Sprintf("GPU type %q not found", in.GPUTypeID))
	}
	if in.GPUCount != nil && (*in.GPUCount < 1 || *in.GPUCount > g.MaxCount) {
		return gpuType{}, gqlFailure(fmt.Sprintf("gpuCount must be between 1 and %d", g.MaxCount))
	}
	if *in.BidPerGPU < g.minimumBid()-1e-9 {
		return gpuType{}, "Your bid price is too low"
	}
	return g, ""
}

func (in *rentInput) setup(g gpuType) podSetup {
	count := 1
	if in.GPUCount != nil {
		count = *in.GPUCount
	}
	cloud := "SECURE"
	if in.CloudType == "COMMUNITY" {
		cloud = "COMMUNITY"
	}
	p := pod{
		image: in.ImageName, args: in.DockerArgs, disk: defaultDisk, env: map[string]string{},
		mounts: json.RawMessage(`{}`), gpuID: g.ID, gpuCount: count, cloud: cloud,
		dataCenterID: defaultDataCenter, price: roundPrice(*in.BidPerGPU * float64(count)),
	}
	if in.ContainerDiskInGb != nil {
		p.disk = *in.ContainerDiskInGb
	}
	if in.VolumeInGb != nil && *in.VolumeInGb > 0 {
		path := in.VolumeMountPath
		if path == "" {
			path = "/workspace"
		}
		p.mounts, _ = json.Marshal(map[string]any{"persistent": map[string]any{"size": *in.VolumeInGb, "path": path}})
	}
	if in.DataCenterID != nil && *in.DataCenterID != "" {
		p.dataCenterID = *in.DataCenterID
	}
	for _, port := range strings.Split(in.Ports, ",") {
		if port = strings.TrimSpace(port); port != "" {
			p.ports = append(p.ports, port)
		}
	}
	for _, e := range in.Env {
		p.env[e.Key] = e.Value
	}
	p.normalise()
	return podSetup{name: in.Name, interruptible: true, pod: p}
}

type podIDInput struct {
	PodID string `json:"podId"`
}

func (s *Server) gqlTerminate(vars map[string]json.RawMessage) (any, gqlFailure) {
	var in podIDInput
	if f := decodeInput(vars, "input", "PodTerminateInput", []string{"podId"}, &in); f != "" {
		return nil, f
	}
	s.mu.Lock()
	m, ok := s.visiblePod(in.PodID)
	if !ok {
		s.mu.Unlock()
		return nil, gqlFailure(fmt.Sprintf("pod %q not found", in.PodID))
	}
	s.deletePodLocked(m, time.Now())
	s.mu.Unlock()
	s.finishDelete(m)
	return map[string]any{"podTerminate": nil}, ""
}

type gqlPodPort struct {
	IP          string `json:"ip"`
	IsIPPublic  bool   `json:"isIpPublic"`
	PrivatePort int    `json:"privatePort"`
	PublicPort  int    `json:"publicPort"`
	Type        string `json:"type"`
}

func (s *Server) gqlPod(vars map[string]json.RawMessage) (any, gqlFailure) {
	var in podIDInput
	if f := decodeInput(vars, "input", "PodFilter", []string{"podId"}, &in); f != "" {
		return nil, f
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.visiblePod(in.PodID)
	if !ok {
		return map[string]any{"pod": nil}, ""
	}
	view := s.podView(m, time.Now())
	desired := "RUNNING"
	switch m.phase {
	case phaseStopped, phaseFailed:
		desired = "EXITED"
	case phaseTerminated:
		desired = "TERMINATED"
	}
	out := map[string]any{
		"id": m.id, "name": m.name, "desiredStatus": desired, "costPerHr": view.Cost, "runtime": nil,
	}
	if view.Runtime != nil {
		ports := []gqlPodPort{}
		for _, p := range view.Runtime.Ports {
			ports = append(ports, gqlPodPort{IP: p.IP, IsIPPublic: true, PrivatePort: p.Private, PublicPort: p.Public, Type: p.Type})
		}
		out["runtime"] = map[string]any{"uptimeInSeconds": view.Runtime.Uptime, "ports": ports}
	}
	return map[string]any{"pod": out}, ""
}
