package api_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/understudy-ai/training-service/api"
	"github.com/understudy-ai/training-service/internal/hubcheck"
	"github.com/understudy-ai/training-service/lifecycle"
)

// hubEnv serves the API with the Hub check on, asking the Hub at endpoint.
func hubEnv(t *testing.T, endpoint string) *env {
	t.Helper()
	hub, err := hubcheck.New(&hubcheck.Options{Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	return newEnv(t, func(c *lifecycle.Config, o *api.Options) { c.Hub = hub })
}

// assertNothingMade checks that a refused start left no job and no stack behind.
func assertNothingMade(t *testing.T, e *env, id string) {
	t.Helper()
	if code, out := e.do(t, "GET", "/api/v1/training/"+id+"/status", token, ""); code != 404 {
		t.Errorf("the refused start %s was stored: %d %v", id, code, out)
	}
	if _, err := os.Stat(filepath.Join(e.data, "datasets", id+".jsonl")); !os.IsNotExist(err) {
		t.Errorf("the refused start's dataset was stored: %v", err)
	}
	code, out := e.do(t, "GET", "/api/v1/stacks", token, "")
	if code != 200 {
		t.Fatalf("stacks: %d %v", code, out)
	}
	for _, s := range out["stacks"].([]any) {
		if s.(map[string]any)["name"] == id {
			t.Errorf("the refused start %s has a stack: %v", id, out)
		}
	}
}

// A Hub id is checked before anything is made: a Hub the service cannot reach is a 422
// model_unavailable that says what slm_type was taken for and what to do instead.
func TestStartWithUnreachableHub(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + ln.Addr().String()
	ln.Close()
	e := hubEnv(t, endpoint)
	code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": "h1"}))
	msg := errMessage(out)
	if code != 422 || errCode(t, out) != "model_unavailable" {
		t.Fatalf("start: %d %v, want 422 model_unavailable", code, out)
	}
	for _, want := range []string{`slm_type "microsoft/DialoGPT-small" is not a path (a local model begins with /, ./, ../ or file://), so it was taken as a Hugging Face Hub id`,
		"the Hub at " + endpoint + " could not be reached from the service (connection refused)",
		"--model-root", "--hub-endpoint", "--hub-check=false"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not say %q", msg, want)
		}
	}
	assertNothingMade(t, e, "h1")
	if strings.Contains(msg, "to train the model directory") {
		t.Errorf("message %q points at a model directory, and there is none", msg)
	}

	// A local model does not need the Hub.
	model := filepath.Join(e.models, "tiny")
	os.MkdirAll(model, 0o700)

	// A Hub id that also names a directory under a model root is still a Hub id, and the
	// refusal says how to send the directory instead.
	code, out = e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": "h-ambiguous", "slm_type": "tiny"}))
	if code != 422 || errCode(t, out) != "model_unavailable" {
		t.Fatalf("start of a Hub id that names a model directory: %d %v, want 422 model_unavailable", code, out)
	}
	if want := fmt.Sprintf("(to train the model directory %s instead, send slm_type %q)", model, model); !strings.Contains(errMessage(out), want) {
		t.Errorf("message %q does not say %q", errMessage(out), want)
	}
	// Relative to the service's working directory, the hint is the ./ path it resolves.
	t.Chdir(filepath.Dir(e.models))
	rel := filepath.Base(e.models) + "/tiny"
	code, out = e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": "h-cwd", "slm_type": rel}))
	if want := fmt.Sprintf("send slm_type %q)", "./"+rel); code != 422 || !strings.Contains(errMessage(out), want) {
		t.Errorf("start of %q: %d %q, want 422 saying %q", rel, code, errMessage(out), want)
	}
	if code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": "h-cwd2", "slm_type": "./" + rel})); code != 202 {
		t.Errorf("start of the hinted %q: %d %v", "./"+rel, code, out)
	}
	if code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": "h-local", "slm_type": model})); code != 202 {
		t.Fatalf("a local model with the Hub unreachable: %d %v", code, out)
	}
}

// A Hub that answers lets a model it has through and refuses one it has not; an id that
// is neither a path nor a Hub id is refused without asking.
func TestStartWithHub(t *testing.T) {
	var asked atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		switch r.URL.Path {
		case "/api/models/microsoft/DialoGPT-small":
			w.Write([]byte(`{"id":"microsoft/DialoGPT-small"}`))
		case "/api/models/org/private":
			w.WriteHeader(http.StatusUnauthorized)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	e := hubEnv(t, srv.URL)

	if code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": "h-ok"})); code != 202 {
		t.Fatalf("a model the Hub has: %d %v", code, out)
	}
	for id, slm := range map[string]string{"h-missing": "org/missing", "h-private": "org/private"} {
		code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": id, "slm_type": slm}))
		if code != 422 || errCode(t, out) != "model_not_found" || !strings.Contains(errMessage(out), `"`+slm+`"`) ||
			!strings.Contains(errMessage(out), srv.URL) {
			t.Errorf("%s: %d %v, want 422 model_not_found naming the id and the Hub", slm, code, out)
		}
		assertNothingMade(t, e, id)
	}

	before := asked.Load()
	for id, slm := range map[string]string{"h-relative": "models/x/y", "h-space": "my model", "h-dots": "org/..x"} {
		code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": id, "slm_type": slm}))
		if code != 422 || errCode(t, out) != "invalid_model" || !strings.Contains(errMessage(out), "neither a model directory under --model-root nor a valid Hugging Face Hub id") {
			t.Errorf("%q: %d %v, want 422 invalid_model", slm, code, out)
		}
		assertNothingMade(t, e, id)
	}
	if n := asked.Load() - before; n != 0 {
		t.Errorf("the Hub was asked %d times about ids that cannot be Hub ids", n)
	}
}
