package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/api"
	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/lifecycle"
	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/store/sqlite"
)

const token = "test-token"

// parkedProvisioner holds every job in provisioning until its context ends, so API tests
// see jobs that exist and can be cancelled without any machine.
type parkedProvisioner struct {
	mu     sync.Mutex
	stacks map[string]bool
}

func (p *parkedProvisioner) Provision(ctx context.Context, req lifecycle.MachineRequest, log func(string)) (job.Machine, error) {
	p.mu.Lock()
	p.stacks[req.TrainID] = true
	p.mu.Unlock()
	<-ctx.Done()
	return job.Machine{}, ctx.Err()
}
func (p *parkedProvisioner) Machine(ctx context.Context, id string) (job.Machine, error) {
	return job.Machine{}, job.Errorf(job.CodeNotFound, "none")
}
func (p *parkedProvisioner) Teardown(ctx context.Context, id string, log func(string)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.stacks, id)
	return nil
}
func (p *parkedProvisioner) Stacks(ctx context.Context) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for s := range p.stacks {
		out = append(out, s)
	}
	return out, nil
}

func (p *parkedProvisioner) Inspect(ctx context.Context, id, provider string) (lifecycle.MachineHealth, error) {
	return lifecycle.MachineHealth{Exists: true, Running: true}, nil
}
func (p *parkedProvisioner) ResourceIDs(ctx context.Context) (map[string]string, error) {
	return map[string]string{}, nil
}

// Check refuses runpod as a service without its API key does, and checks options with
// the real programs.
func (p *parkedProvisioner) Check(req lifecycle.MachineRequest) error {
	if req.Provider == "runpod" {
		return &job.Error{Code: job.CodeInvalidArgument, Reason: job.ReasonProviderNotConfigured,
			Message: "provider runpod is not configured on this service: RUNPOD_API_KEY (or RUNPOD_API_KEY_FILE) is not set"}
	}
	prog, err := programs.For(req.Provider)
	if err != nil {
		return err
	}
	return prog.ValidateOptions(programs.Spec{Provider: req.Provider, Machine: programs.MachineOptions(req.Options),
		Local: programs.LocalConfig{BaseDir: "/srv/understudy/workers"}})
}

type noConnector struct{}

func (noConnector) Connect(ctx context.Context, m job.Machine, s ssh.Signer) (lifecycle.Session, error) {
	return nil, job.Errorf(job.CodeUnavailable, "no machines in API tests")
}

type env struct {
	srv  *httptest.Server
	data string
	drv  *lifecycle.Driver
	// store is the job store (SQLite) behind the driver and the API's sessions.
	store *sqlite.Store
	// datasets and models are the service's --dataset-root and --model-root.
	datasets, models string
}

// newEnv serves the API over a real driver (SQLite, parked machines); configure, when
// given, adjusts the driver's and the API's configuration first.
func newEnv(t *testing.T, configure ...func(*lifecycle.Config, *api.Options)) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{data: dir, datasets: t.TempDir(), models: t.TempDir()}
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "jobs.db"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := lifecycle.Config{DataDir: dir, Runtime: fstest.MapFS{}, WeightsURL: "file:///w",
		DatasetRoots: []string{e.datasets}, ModelRoots: []string{e.models}}
	opts := api.Options{Token: token, Providers: []string{"local", "lambda", "runpod"}, Logger: log, MaxBodyBytes: 1 << 20,
		ProviderStatus: map[string]string{"local": "ready", "lambda": "ready", "runpod": "not configured: RUNPOD_API_KEY (or RUNPOD_API_KEY_FILE) is not set"},
		Sessions:       st}
	e.store = st
	for _, c := range configure {
		c(&cfg, &opts)
	}
	drv, err := lifecycle.New(cfg, st, &parkedProvisioner{stacks: map[string]bool{}}, noConnector{}, log)
	if err != nil {
		t.Fatal(err)
	}
	drv.Start(context.Background())
	opts.SpoolDir = drv.UploadDir()
	e.srv = httptest.NewServer(api.New(drv, opts))
	t.Cleanup(func() {
		e.srv.Close()
		drv.Stop(context.Background())
		st.Close()
	})
	e.drv = drv
	return e
}

func (e *env) do(t *testing.T, method, path, tok, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: body is not JSON: %q", method, path, raw)
	}
	checkResponse(t, method, path, resp, raw)
	return resp.StatusCode, out
}

func body(overrides map[string]any) string {
	b := map[string]any{
		"train_id": "t1", "endpoint_id": "ep-1", "version": 1, "training_pairs_count": 2,
		"slm_type": "microsoft/DialoGPT-small", "source_llm": "gpt-3.5-turbo", "provider": "local",
		"training_pairs": []map[string]string{{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}},
	}
	for k, v := range overrides {
		if v == nil {
			delete(b, k)
		} else {
			b[k] = v
		}
	}
	raw, _ := json.Marshal(b)
	return string(raw)
}

func errCode(t *testing.T, out map[string]any) string {
	t.Helper()
	e, ok := out["error"].(map[string]any)
	if !ok || e["message"] == "" {
		t.Fatalf("no error body: %v", out)
	}
	return e["code"].(string)
}

func TestStartStatusCancel(t *testing.T) {
	e := newEnv(t)
	code, out := e.do(t, "POST", "/api/v1/training/start", token, body(nil))
	if code != http.StatusAccepted || out["train_id"] != "t1" {
		t.Fatalf("start: %d %v", code, out)
	}
	code, out = e.do(t, "POST", "/api/v1/training/start", token, body(nil))
	if code != http.StatusOK {
		t.Fatalf("same start again: %d %v", code, out)
	}
	code, out = e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"version": 2}))
	if code != http.StatusConflict || errCode(t, out) != "train_id_conflict" {
		t.Fatalf("different body: %d %v", code, out)
	}
	code, out = e.do(t, "GET", "/api/v1/training/t1/status", token, "")
	if code != 200 || out["endpoint_id"] != "ep-1" || out["progress"] == nil || out["timestamps"] == nil {
		t.Fatalf("status: %d %v", code, out)
	}
	code, _ = e.do(t, "POST", "/api/v1/training/t1/cancel", token, "")
	if code != http.StatusAccepted {
		t.Fatalf("cancel: %d", code)
	}
	// Wait for the end through the log stream, which must finish with an end event.
	req, _ := http.NewRequest("GET", e.srv.URL+"/api/v1/training/t1/logs", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	var events []string
	for sc.Scan() {
		if ev, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
			events = append(events, ev)
		}
	}
	resp.Body.Close()
	if len(events) == 0 || events[len(events)-1] != "end" || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("log stream events: %v", events)
	}
	code, out = e.do(t, "GET", "/api/v1/training/t1/status", token, "")
	if code != http.StatusOK || out["status"] != "cancelled" {
		t.Fatalf("after cancel: %v", out)
	}
	code, out = e.do(t, "POST", "/api/v1/training/t1/cancel", token, "")
	if code != http.StatusConflict || errCode(t, out) != "job_terminal" {
		t.Fatalf("cancel terminal: %d %v", code, out)
	}
	code, out = e.do(t, "GET", "/api/v1/training/t1/events", token, "")
	if evs, _ := out["events"].([]any); code != 200 || len(evs) < 3 {
		t.Fatalf("events: %d %v", code, out)
	}
}

func TestValidation(t *testing.T) {
	e := newEnv(t)
	dir := e.datasets
	good := filepath.Join(dir, "good.jsonl")
	os.WriteFile(good, []byte("{\"prompt\":\"a\",\"response\":\"b\"}\n"), 0o600)
	bad := filepath.Join(dir, "bad.jsonl")
	os.WriteFile(bad, []byte("{\"prompt\":\"a\",\"response\":\"b\"}\n{oops\n"), 0o600)
	empty := filepath.Join(dir, "empty.jsonl")
	os.WriteFile(empty, nil, 0o600)
	unreadable := filepath.Join(dir, "unreadable.jsonl")
	os.WriteFile(unreadable, []byte("x"), 0o000)
	cases := []struct {
		name   string
		body   string
		status int
		code   string
	}{
		{"malformed json", `{"train_id":`, 400, "invalid_json"},
		{"not an object", `[1]`, 400, "invalid_json"},
		{"two objects", body(nil) + body(nil), 400, "invalid_json"},
		{"missing train_id", body(map[string]any{"train_id": nil}), 422, "missing_field"},
		{"missing provider", body(map[string]any{"provider": nil}), 422, "missing_field"},
		{"wrong type version", body(map[string]any{"version": "one"}), 400, "invalid_field"},
		{"fractional version", body(map[string]any{"version": 1.5}), 400, "invalid_field"},
		{"wrong type slm", body(map[string]any{"slm_type": 7}), 400, "invalid_field"},
		{"unknown provider", body(map[string]any{"provider": "mars"}), 422, "unknown_provider"},
		{"bad train_id", body(map[string]any{"train_id": "../etc"}), 422, "invalid_train_id"},
		{"long train_id", body(map[string]any{"train_id": strings.Repeat("a", 129)}), 422, "invalid_train_id"},
		{"bad endpoint_id", body(map[string]any{"endpoint_id": "a/b"}), 422, "invalid_endpoint_id"},
		{"version zero", body(map[string]any{"version": 0}), 422, "invalid_version"},
		{"no data", body(map[string]any{"training_pairs": nil}), 422, "missing_dataset"},
		{"both data", body(map[string]any{"dataset_uri": "file://" + good}), 422, "ambiguous_dataset"},
		{"pairs not array", body(map[string]any{"training_pairs": "x"}), 400, "invalid_field"},
		{"empty pairs", body(map[string]any{"training_pairs": []any{}}), 422, "invalid_dataset"},
		{"pair missing field", body(map[string]any{"training_pairs": []any{map[string]any{"prompt": "a"}}, "training_pairs_count": 1}), 422, "invalid_dataset"},
		{"count mismatch", body(map[string]any{"training_pairs_count": 3}), 422, "pairs_count_mismatch"},
		{"dataset missing", body(map[string]any{"training_pairs": nil, "dataset_uri": "file://" + dir + "/nope.jsonl"}), 422, "dataset_not_found"},
		{"dataset malformed line", body(map[string]any{"training_pairs": nil, "dataset_uri": "file://" + bad}), 422, "invalid_dataset"},
		{"dataset empty", body(map[string]any{"training_pairs": nil, "dataset_uri": "file://" + empty}), 422, "invalid_dataset"},
		{"dataset scheme", body(map[string]any{"training_pairs": nil, "dataset_uri": "ftp://x/y"}), 422, "invalid_dataset"},
		{"hyperparameter range", body(map[string]any{"hyperparameters": map[string]any{"epochs": 0}}), 422, "invalid_hyperparameters"},
		{"hyperparameter unknown", body(map[string]any{"hyperparameters": map[string]any{"epoch": 1}}), 422, "invalid_hyperparameters"},
		{"hyperparameters type", body(map[string]any{"hyperparameters": []int{1}}), 400, "invalid_field"},
		{"missing local model", body(map[string]any{"slm_type": "/nonexistent/model"}), 422, "invalid_model"},
		{"negative duration", body(map[string]any{"max_duration_seconds": -1}), 422, "invalid_max_duration_seconds"},
		{"endless duration", body(map[string]any{"max_duration_seconds": 1e15}), 422, "invalid_max_duration_seconds"},
		{"too large", `{"x":"` + strings.Repeat("a", 2<<20) + `"}`, 413, "body_too_large"},
		// Outside every --dataset-root (it would open, then fail every read).
		{"dataset outside the roots", body(map[string]any{"training_pairs": nil, "dataset_uri": "file:///proc/self/mem"}), 422, "dataset_not_allowed"},
	}
	if os.Getuid() != 0 { // root reads anything
		cases = append(cases, struct {
			name   string
			body   string
			status int
			code   string
		}{"dataset unreadable", body(map[string]any{"training_pairs": nil, "dataset_uri": "file://" + unreadable}), 422, "invalid_dataset"})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out := e.do(t, "POST", "/api/v1/training/start", token, c.body)
			if code != c.status || errCode(t, out) != c.code {
				t.Fatalf("got %d %v, want %d %s", code, out, c.status, c.code)
			}
		})
	}
	// Nothing of the refused requests was stored.
	_, out := e.do(t, "GET", "/api/v1/training", token, "")
	if jobs := out["jobs"].([]any); len(jobs) != 0 {
		t.Fatalf("refused requests left jobs: %v", jobs)
	}
	code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"training_pairs": nil, "dataset_uri": "file://" + good, "training_pairs_count": 1}))
	if code != http.StatusAccepted {
		t.Fatalf("good dataset_uri: %d %v", code, out)
	}
}

func TestAuthAndNotFound(t *testing.T) {
	e := newEnv(t)
	for _, tok := range []string{"", "wrong"} {
		code, out := e.do(t, "GET", "/api/v1/training", tok, "")
		if code != 401 || errCode(t, out) != "unauthenticated" {
			t.Fatalf("token %q: %d %v", tok, code, out)
		}
	}
	code, out := e.do(t, "GET", "/api/v1/training/nope/status", token, "")
	if code != 404 || errCode(t, out) != "job_not_found" {
		t.Fatalf("unknown job: %d %v", code, out)
	}
	if code, _ := e.do(t, "POST", "/api/v1/training/nope/cancel", token, ""); code != 404 {
		t.Fatalf("cancel unknown: %d", code)
	}
	if code, _ := e.do(t, "GET", "/api/v1/training/nope/events", token, ""); code != 404 {
		t.Fatalf("events unknown: %d", code)
	}
	if code, _ := e.do(t, "GET", "/api/v1/training/nope/logs", token, ""); code != 404 {
		t.Fatalf("logs unknown: %d", code)
	}
	if code, _ := e.do(t, "GET", "/healthz", "", ""); code != 200 {
		t.Fatalf("healthz: %d", code)
	}
	if code, _ := e.do(t, "GET", "/readyz", "", ""); code != 200 {
		t.Fatalf("readyz: %d", code)
	}
	if code, _ := e.do(t, "DELETE", "/api/v1/training/start", token, ""); code != 405 {
		t.Fatalf("wrong method: %d", code)
	}
	if code, _ := e.do(t, "GET", "/api/v2/x", token, ""); code != 404 {
		t.Fatalf("unknown path: %d", code)
	}
}

func TestCompletedNeedsTheJobToken(t *testing.T) {
	e := newEnv(t)
	e.do(t, "POST", "/api/v1/training/start", token, body(nil))
	for _, tok := range []string{"", token, "guess"} {
		code, out := e.do(t, "POST", "/api/v1/training/t1/completed", tok, `{"exit_code":0}`)
		if code != 401 {
			t.Fatalf("completed with %q: %d %v", tok, code, out)
		}
	}
	if code, _ := e.do(t, "POST", "/api/v1/training/ghost/completed", "x", ""); code != 401 {
		t.Fatalf("completed of unknown job: %d", code)
	}
}

func TestListFiltersAndPages(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 5; i++ {
		ep := "even"
		if i%2 == 1 {
			ep = "odd"
		}
		code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": fmt.Sprintf("j%d", i), "endpoint_id": ep}))
		if code != 202 {
			t.Fatalf("start: %d %v", code, out)
		}
	}
	_, out := e.do(t, "GET", "/api/v1/training?endpoint_id=odd", token, "")
	if jobs := out["jobs"].([]any); len(jobs) != 2 {
		t.Fatalf("endpoint filter: %v", out)
	}
	_, out = e.do(t, "GET", "/api/v1/training?limit=2", token, "")
	if jobs := out["jobs"].([]any); len(jobs) != 2 || out["next_cursor"] == "" || jobs[0].(map[string]any)["train_id"] != "j4" {
		t.Fatalf("page 1: %v", out)
	}
	_, out = e.do(t, "GET", "/api/v1/training?limit=2&cursor="+out["next_cursor"].(string), token, "")
	if jobs := out["jobs"].([]any); len(jobs) != 2 || jobs[0].(map[string]any)["train_id"] != "j2" {
		t.Fatalf("page 2: %v", out)
	}
	for _, q := range []string{"status=bogus", "limit=0", "limit=x", "cursor=!!"} {
		code, out := e.do(t, "GET", "/api/v1/training?"+q, token, "")
		if code != 422 {
			t.Fatalf("%s: %d %v", q, code, out)
		}
	}
	_, out = e.do(t, "GET", "/api/v1/training?status=queued,provisioning", token, "")
	if jobs := out["jobs"].([]any); len(jobs) != 5 {
		t.Fatalf("status filter: %v", out)
	}
}

// A start for a provider the service cannot use, or with machine options the provider
// cannot honour, is a 422 naming the problem, and stores nothing.
func TestStartChecksTheProvider(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name      string
		overrides map[string]any
		code      int
		errCode   string
		mentions  string
	}{
		{"not configured", map[string]any{"provider": "runpod"}, 422, "provider_not_configured", "RUNPOD_API_KEY"},
		{"spot on lambda", map[string]any{"provider": "lambda", "spot": true}, 422, "invalid_machine_options", "no spot"},
		{"gpu type on local", map[string]any{"gpu_type": "NVIDIA H100 80GB HBM3"}, 422, "invalid_machine_options", "local provider"},
		{"fallback without spot", map[string]any{"provider": "lambda", "on_demand_fallback": true}, 422, "invalid_machine_options", "spot"},
		{"spot not a bool", map[string]any{"spot": "yes"}, 400, "invalid_field", "spot"},
		{"gpu type not a string", map[string]any{"gpu_type": 4090}, 400, "invalid_field", "gpu_type"},
	}
	for _, c := range cases {
		code, out := e.do(t, "POST", "/api/v1/training/start", token, body(c.overrides))
		if code != c.code || errCode(t, out) != c.errCode {
			t.Errorf("%s: %d %v, want %d %s", c.name, code, out, c.code, c.errCode)
			continue
		}
		if msg := out["error"].(map[string]any)["message"].(string); !strings.Contains(msg, c.mentions) {
			t.Errorf("%s: message %q does not mention %q", c.name, msg, c.mentions)
		}
	}
	if code, _ := e.do(t, "GET", "/api/v1/training/t1/status", token, ""); code != 404 {
		t.Errorf("a refused start stored a job: %d", code)
	}
	code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"provider": "lambda", "gpu_type": "gpu_1x_h100_pcie"}))
	if code != 202 || out["gpu_type"] != "gpu_1x_h100_pcie" {
		t.Fatalf("lambda start: %d %v", code, out)
	}
}

func TestReadyzListsProviders(t *testing.T) {
	e := newEnv(t)
	code, out := e.do(t, "GET", "/readyz", "", "")
	providers, _ := out["providers"].(map[string]any)
	if code != 200 || providers["local"] != "ready" || !strings.HasPrefix(providers["runpod"].(string), "not configured: RUNPOD_API_KEY") {
		t.Fatalf("readyz: %d %v", code, out)
	}
}

func TestStacksGCWithoutClouds(t *testing.T) {
	e := newEnv(t)
	code, out := e.do(t, "GET", "/api/v1/stacks/gc", token, "")
	if code != 200 || len(out["orphans"].([]any)) != 0 {
		t.Fatalf("gc list: %d %v", code, out)
	}
	code, out = e.do(t, "POST", "/api/v1/stacks/gc", token, "")
	if code != 200 || len(out["orphans"].([]any)) != 0 {
		t.Fatalf("gc: %d %v", code, out)
	}
	if code, _ := e.do(t, "POST", "/api/v1/stacks/gc", "", ""); code != 401 {
		t.Fatalf("gc without token: %d", code)
	}
}
