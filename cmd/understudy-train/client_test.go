package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/progress"
)

// fakeService answers as the service does, for the client's commands.
type fakeService struct {
	*httptest.Server
	job map[string]any
	// stream is the log stream's events, sent in order; hold keeps the stream open.
	stream []string
	hold   bool
}

func newFakeService(t *testing.T) *fakeService {
	f := &fakeService{job: map[string]any{
		"train_id": "j1", "endpoint_id": "ep", "version": 2, "slm_type": "microsoft/DialoGPT-small",
		"provider": "local", "status": "completed", "cost_usd": 0.0123,
		"weights_uri": "file:///data/weights/ep/v2/j1/",
		"progress":    map[string]any{"step": 10, "total_steps": 10, "loss": 1.5, "tokens_per_second": 2500.0},
		"machine":     map[string]any{"gpu": "none"},
		"timestamps":  map[string]any{"queued": "2026-01-01T00:00:00Z", "completed": "2026-01-01T00:01:05Z"},
		"created_at":  "2026-01-01T00:00:00Z",
	}}
	mux := http.NewServeMux()
	writeJSON := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(v)
	}
	auth := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer good" {
				writeJSON(w, 401, map[string]any{"error": map[string]any{"code": "unauthorized", "message": "missing or wrong API token"}})
				return
			}
			h(w, r)
		}
	}
	notFound := func(w http.ResponseWriter) {
		writeJSON(w, 404, map[string]any{"error": map[string]any{"code": "not_found", "message": "no job nope"}})
	}
	mux.HandleFunc("POST /api/v1/training/start", auth(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 202, map[string]any{"train_id": "j1", "status": "queued"})
	}))
	mux.HandleFunc("GET /api/v1/training/{id}/status", auth(func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "j1" {
			notFound(w)
			return
		}
		writeJSON(w, 200, f.job)
	}))
	mux.HandleFunc("GET /api/v1/training", auth(func(w http.ResponseWriter, r *http.Request) {
		failed := map[string]any{"train_id": "j2", "endpoint_id": "ep", "version": 1, "provider": "lambda", "status": "failed",
			"error": map[string]any{"code": "provisioning_failed", "message": "no capacity"}, "created_at": "2026-01-01T00:00:00Z"}
		writeJSON(w, 200, map[string]any{"jobs": []any{f.job, failed}})
	}))
	mux.HandleFunc("GET /api/v1/training/{id}/logs", auth(func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "j1" {
			notFound(w)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for _, e := range f.stream {
			fmt.Fprint(w, e)
			w.(http.Flusher).Flush()
		}
		if f.hold {
			<-r.Context().Done()
		}
	}))
	f.Server = httptest.NewServer(mux)
	t.Cleanup(f.Close)
	t.Setenv("UNDERSTUDY_URL", f.URL)
	t.Setenv("UNDERSTUDY_API_TOKEN", "good")
	return f
}

func logEvent(stream, text string) string {
	raw, _ := json.Marshal(map[string]string{"stream": stream, "text": text})
	return "event: log\ndata: " + string(raw) + "\n\n"
}

func runCLI(ctx context.Context, args ...string) (string, string, error) {
	var out, errb bytes.Buffer
	err := run(ctx, args, &out, &errb)
	return out.String(), errb.String(), err
}

func TestHelpExitsZeroAndNamesTheArgument(t *testing.T) {
	for _, cmd := range []string{"status", "cancel", "logs"} {
		_, stderr, err := runCLI(context.Background(), cmd, "-h")
		if !errors.Is(err, flag.ErrHelp) || exitCode(err) != 0 {
			t.Errorf("%s -h: %v (exit %d), want help and exit 0", cmd, err, exitCode(err))
		}
		if !strings.Contains(stderr, "usage: understudy-train "+cmd+" [flags] <train_id>") {
			t.Errorf("%s -h does not name <train_id>:\n%s", cmd, stderr)
		}
	}
	for _, cmd := range []string{"start", "list", "stacks", "serve"} {
		if _, _, err := runCLI(context.Background(), cmd, "--help"); exitCode(err) != 0 {
			t.Errorf("%s --help: exit %d", cmd, exitCode(err))
		}
	}
}

func TestFlagTypoSuggestsTheFlag(t *testing.T) {
	_, _, err := runCLI(context.Background(), "start", "--endpoint", "e")
	if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "did you mean --endpoint-id?") {
		t.Fatalf("got %v", err)
	}
	_, _, err = runCLI(context.Background(), "list", "--stauts", "failed")
	if err == nil || !strings.Contains(err.Error(), "did you mean --status?") {
		t.Fatalf("got %v", err)
	}
	_, _, err = runCLI(context.Background(), "serve", "--api-token-file", "f")
	if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "did you mean --token-file?") {
		t.Fatalf("serve: got %v", err)
	}
}

func TestURLWithoutSchemeIsRefusedWithTheFix(t *testing.T) {
	t.Setenv("UNDERSTUDY_API_TOKEN", "t")
	_, _, err := runCLI(context.Background(), "status", "--url", "127.0.0.1:8080", "j1")
	if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "http://127.0.0.1:8080") {
		t.Fatalf("got %v", err)
	}
}

func TestTokenFileProblemsNameTheFileNotTheFlag(t *testing.T) {
	t.Setenv("UNDERSTUDY_API_TOKEN", "")
	p := filepath.Join(t.TempDir(), "token")
	os.WriteFile(p, []byte("x\n"), 0o644)
	_, _, err := runCLI(context.Background(), "status", "--token-file", p, "j1")
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "chmod 600") ||
		strings.Contains(err.Error(), "pass --token-file") {
		t.Fatalf("got %v", err)
	}
	t.Setenv("UNDERSTUDY_DATA_DIR", t.TempDir())
	_, _, err = runCLI(context.Background(), "status", "j1")
	if err == nil || !strings.Contains(err.Error(), "set UNDERSTUDY_API_TOKEN or pass --token-file") || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("got %v", err)
	}
}

func TestRefusedTokenNamesItsSource(t *testing.T) {
	newFakeService(t)
	t.Setenv("UNDERSTUDY_API_TOKEN", "")
	p := filepath.Join(t.TempDir(), "token")
	os.WriteFile(p, []byte("wrong\n"), 0o600)
	_, _, err := runCLI(context.Background(), "status", "--token-file", p, "j1")
	if err == nil || !strings.Contains(err.Error(), "the token came from the token file "+p) {
		t.Fatalf("got %v", err)
	}
	t.Setenv("UNDERSTUDY_API_TOKEN", "also-wrong")
	_, _, err = runCLI(context.Background(), "status", "j1")
	if err == nil || !strings.Contains(err.Error(), "the token came from $UNDERSTUDY_API_TOKEN") {
		t.Fatalf("got %v", err)
	}
}

func TestLogsOfAnUnknownJobSaysSo(t *testing.T) {
	newFakeService(t)
	_, _, err := runCLI(context.Background(), "logs", "nope")
	if err == nil || err.Error() != "no job nope (404 not_found)" {
		t.Fatalf("got %v", err)
	}
}

func TestStatusSummaryAndJSON(t *testing.T) {
	f := newFakeService(t)
	out, _, err := runCLI(context.Background(), "status", "j1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"status    completed", "step 10/10, loss 1.5000, 2.5K tokens/s", "$0.0123", "duration  1m5s",
		"weights   file:///data/weights/ep/v2/j1/"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n > 12 {
		t.Errorf("summary of %d lines:\n%s", n, out)
	}
	out, _, err = runCLI(context.Background(), "status", "--json", "j1")
	var v map[string]any
	if err != nil || json.Unmarshal([]byte(out), &v) != nil || v["weights_uri"] != f.job["weights_uri"] {
		t.Fatalf("--json: %v %s", err, out)
	}
}

func TestListShowsTheErrorOfFailedJobs(t *testing.T) {
	newFakeService(t)
	out, _, err := runCLI(context.Background(), "list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[2], "provisioning_failed: no capacity") {
		t.Fatalf("list:\n%s", out)
	}
	// Aligned: every row's STATUS column starts where the header's does.
	col := strings.Index(lines[0], "STATUS")
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l[col:], "completed") && !strings.HasPrefix(l[col:], "failed") {
			t.Errorf("not aligned:\n%s", out)
		}
	}
}

func TestStartFollowEndsWithTheWeights(t *testing.T) {
	f := newFakeService(t)
	f.stream = []string{
		logEvent("service", "status: provisioning"),
		logEvent("pulumi", "Updating (j1):"),
		logEvent("pulumi", " +  understudy:index:LocalWorker worker created (1s) "),
		logEvent("pulumi", "Resources:"),
		logEvent("pulumi", "The resources in the stack have been deleted, but the history and configuration associated with the stack are still maintained. If you want to remove the stack completely, run `pulumi stack rm j1`."),
		logEvent("progress", `{"v":1,"event":"step","time":1,"step":10,"total_steps":10,"epoch":1,"loss":1.5,"learning_rate":0.001,"tokens_per_second":2500,"eta_seconds":0}`),
		"event: end\ndata: {\"status\":\"completed\"}\n\n",
	}
	data := filepath.Join(t.TempDir(), "d.jsonl")
	os.WriteFile(data, []byte(`{"prompt":"a","response":"b"}`+"\n"), 0o600)
	out, _, err := runCLI(context.Background(), "start", "--endpoint-id", "ep", "--dataset", data, "--follow")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "taken as a Hugging Face id") {
		t.Errorf("no word on what slm_type was taken for:\n%s", out)
	}
	if !strings.Contains(out, "[pulumi] LocalWorker worker created (1s)") || strings.Contains(out, "pulumi stack rm") ||
		strings.Contains(out, "Updating") {
		t.Errorf("Pulumi's output not summarised:\n%s", out)
	}
	if !strings.Contains(out, "weights   file:///data/weights/ep/v2/j1/") {
		t.Errorf("no weights location at the end:\n%s", out)
	}
}

func TestInterruptedFollowSaysTheJobKeepsRunning(t *testing.T) {
	f := newFakeService(t)
	f.stream = []string{logEvent("service", "status: training")}
	f.hold = true
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	out, _, err := runCLI(ctx, "logs", "j1")
	if err == nil || !strings.Contains(out, "the job keeps running") || !strings.Contains(out, "understudy-train logs j1") ||
		!strings.Contains(out, "understudy-train cancel j1") {
		t.Fatalf("%v\n%s", err, out)
	}
}

func TestModelIsResolvedOrRefused(t *testing.T) {
	dir := t.TempDir()
	if m, note, err := resolveModel(dir); err != nil || m != dir || !strings.Contains(note, "local directory") {
		t.Errorf("dir: %q %q %v", m, note, err)
	}
	if _, _, err := resolveModel("./models/missing"); err == nil || !strings.Contains(err.Error(), "no such directory") {
		t.Errorf("missing path: %v", err)
	}
	if m, note, err := resolveModel("gpt2"); err != nil || m != "gpt2" || !strings.Contains(note, "Hugging Face id") {
		t.Errorf("hub id: %q %q %v", m, note, err)
	}
}

func TestProgressBar(t *testing.T) {
	loss, eta := 2.25, 90.0
	e := stepEvent(30, 120, &loss, 12345, &eta)
	got := progressBar(e, 0.05)
	want := "[======>                 ] 30/120  25%  loss 2.2500  12.3K tok/s  ETA 1m30s  $0.0500"
	if got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
}

func stepEvent(step, total int, loss *float64, tps float64, eta *float64) progress.Event {
	return progress.Event{Event: progress.EventStep, Step: step, TotalSteps: total, Loss: loss, TokensPerSecond: tps, ETASeconds: eta}
}
