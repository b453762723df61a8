package api_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/understudy-ai/training-service/api"
	"github.com/understudy-ai/training-service/internal/openapitest"
	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/lifecycle"
	"github.com/understudy-ai/training-service/store"
	"github.com/understudy-ai/training-service/trainer"
)

var loadDoc = sync.OnceValues(func() (*openapitest.Doc, error) {
	return openapitest.Load(api.OpenAPI())
})

func openAPIDoc(t *testing.T) *openapitest.Doc {
	t.Helper()
	d, err := loadDoc()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// checkResponse holds a response of the API tests to the document: the operation's
// documented statuses, media types and schemas. A request the document has no operation
// for (an unknown path, a wrong method) is answered by the router with an error body.
func checkResponse(t *testing.T, method, path string, resp *http.Response, raw []byte) {
	t.Helper()
	d := openAPIDoc(t)
	if !d.Documented(method, path) {
		var e api.ErrorBody
		if err := json.Unmarshal(raw, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
			t.Errorf("%s %s: %d without an error body: %q", method, path, resp.StatusCode, raw)
		}
		return
	}
	if err := d.ValidateResponse(method, path, resp.StatusCode, resp.Header.Get("Content-Type"), raw); err != nil {
		t.Error(err)
	}
}

// TestOpenAPIMatchesRouter holds the document to the router: every route with its
// methods, and no path or method that no route serves.
func TestOpenAPIMatchesRouter(t *testing.T) {
	t.Parallel()
	routes := map[string][]string{}
	srv := api.New(nil, api.Options{Token: token})
	if err := srv.Walk(func(path, method string) error {
		routes[path] = append(routes[path], method)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, ms := range routes {
		sort.Strings(ms)
	}
	documented := openAPIDoc(t).Paths()
	for path, ms := range routes {
		if got, ok := documented[path]; !ok {
			t.Errorf("route %s %v is not in api/openapi.json", path, ms)
		} else if !slices.Equal(got, ms) {
			t.Errorf("route %s serves %v; api/openapi.json documents %v", path, ms, got)
		}
	}
	for path, ms := range documented {
		if _, ok := routes[path]; !ok {
			t.Errorf("api/openapi.json documents %s %v, which no route serves", path, ms)
		}
	}
}

// TestOpenAPIIsValid checks the document against the OpenAPI 3.1 schema
// (testdata/openapi-3.1-schema.json, https://spec.openapis.org/oas/3.1/schema/2022-10-07)
// and every schema in it against JSON Schema 2020-12.
func TestOpenAPIIsValid(t *testing.T) {
	t.Parallel()
	f, err := os.Open("testdata/openapi-3.1-schema.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	meta, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	const metaURL = "https://spec.openapis.org/oas/3.1/schema/2022-10-07"
	if err := c.AddResource(metaURL, meta); err != nil {
		t.Fatal(err)
	}
	schema, err := c.Compile(metaURL)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(api.OpenAPI()))
	if err != nil {
		t.Fatal(err)
	}
	if err := schema.Validate(doc); err != nil {
		t.Fatalf("api/openapi.json is not valid OpenAPI 3.1: %v", err)
	}
	if err := openAPIDoc(t).Check(); err != nil {
		t.Fatal(err)
	}
	// Every operation has an id (clients generate names from them), and they differ.
	seen := map[string]bool{}
	var raw struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(api.OpenAPI(), &raw); err != nil {
		t.Fatal(err)
	}
	for path, item := range raw.Paths {
		for m, op := range item {
			if m == "parameters" {
				continue
			}
			var o struct {
				OperationID string `json:"operationId"`
			}
			json.Unmarshal(op, &o)
			if o.OperationID == "" || seen[o.OperationID] {
				t.Errorf("%s %s: operationId %q missing or repeated", m, path, o.OperationID)
			}
			seen[o.OperationID] = true
		}
	}
}

// TestOpenAPIHyperparametersAreTheRuntimes: the document's hyperparameters are the rules
// the service checks a start with (the runtime's hparams_schema.json).
func TestOpenAPIHyperparametersAreTheRuntimes(t *testing.T) {
	t.Parallel()
	raw, err := trainer.FS().(interface{ ReadFile(string) ([]byte, error) }).ReadFile("understudy_trainer/hparams_schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Components struct {
			Schemas struct {
				Hyperparameters struct {
					Properties map[string]any `json:"properties"`
				} `json:"Hyperparameters"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(api.OpenAPI(), &doc); err != nil {
		t.Fatal(err)
	}
	if got := doc.Components.Schemas.Hyperparameters.Properties; !reflect.DeepEqual(got, want) {
		t.Fatalf("api/openapi.json's Hyperparameters properties\n%v\ndiffer from trainer/understudy_trainer/hparams_schema.json\n%v", got, want)
	}
}

func TestOpenAPIIsServedWithoutToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	resp, err := http.Get(e.srv.URL + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") || !bytes.Equal(raw, api.OpenAPI()) {
		t.Fatalf("GET /openapi.json: %d %s, %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), len(raw))
	}
	checkResponse(t, "GET", "/openapi.json", resp, raw)
}

// A 405 names the methods the path has (RFC 9110), as the fuzzer found it did not.
func TestMethodNotAllowedSaysWhatIsAllowed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for path, want := range map[string]string{
		"/api/v1/stacks/gc":          "GET, POST",
		"/api/v1/training/x1/cancel": "POST",
		"/healthz":                   "GET",
	} {
		req, _ := http.NewRequest("TRACE", e.srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != want {
			t.Errorf("TRACE %s: %d, Allow %q; want 405, Allow %q", path, resp.StatusCode, resp.Header.Get("Allow"), want)
		}
	}
}

// follow is a boolean: a value that is none is refused, not taken as true (the fuzzer
// found follow=null streaming).
func TestLogsFollowIsABoolean(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if code, out := e.do(t, "POST", "/api/v1/training/start", token, body(nil)); code != http.StatusAccepted {
		t.Fatalf("start: %d %v", code, out)
	}
	code, out := e.do(t, "GET", "/api/v1/training/t1/logs?follow=null", token, "")
	if code != http.StatusUnprocessableEntity || errCode(t, out) != "invalid_follow" {
		t.Fatalf("follow=null: %d %v", code, out)
	}
	if code, out := e.do(t, "GET", "/api/v1/training/t1/logs?follow=0", token, ""); code != 200 || out["train_id"] != "t1" {
		t.Fatalf("follow=0: %d %v", code, out)
	}
}

// jsonFields is the set of JSON field names of a struct type, embedded structs' included.
func jsonFields(t reflect.Type) map[string]bool {
	out := map[string]bool{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && name == "" {
			for n := range jsonFields(f.Type) {
				out[n] = true
			}
			continue
		}
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = true
	}
	return out
}

// TestOpenAPISchemasHaveEveryField holds the document's response schemas to the Go types
// the handlers encode: a field added to one must be documented (the schemas refuse fields
// they do not name).
func TestOpenAPISchemasHaveEveryField(t *testing.T) {
	t.Parallel()
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Properties map[string]any `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(api.OpenAPI(), &doc); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]any{
		"Job": job.Job{}, "Progress": job.Progress{}, "Machine": job.Machine{}, "Attempt": job.Attempt{},
		"Failure": job.Failure{}, "Manifest": job.Manifest{}, "ManifestFile": job.ManifestFile{},
		"Hyperparameters": job.Hyperparameters{}, "Event": job.Event{}, "LogLine": store.LogLine{},
		"StackInfo": lifecycle.StackInfo{}, "CloudMachine": lifecycle.CloudMachine{},
		"GCFailure": lifecycle.GCFailure{}, "GCResult": lifecycle.GCResult{}, "JobList": api.ListResponse{},
		"ErrorDetail": api.ErrorDetail{},
	} {
		want := jsonFields(reflect.TypeOf(v))
		got := doc.Components.Schemas[name].Properties
		for f := range want {
			if _, ok := got[f]; !ok {
				t.Errorf("api/openapi.json: schema %s lacks the field %q that %T has", name, f, v)
			}
		}
		for f := range got {
			if !want[f] {
				t.Errorf("api/openapi.json: schema %s documents the field %q that %T does not have", name, f, v)
			}
		}
	}
}
