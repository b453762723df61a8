package api_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/api"
	"github.com/understudy-ai/training-service/lifecycle"
)

func fileStart(uri string, n int) string {
	return body(map[string]any{"training_pairs": nil, "dataset_uri": uri, "training_pairs_count": n})
}

func errMessage(out map[string]any) string {
	e, _ := out["error"].(map[string]any)
	m, _ := e["message"].(string)
	return m
}

// Local datasets are read only under --dataset-root, as regular files, within the limits,
// and no error quotes them.
func TestLocalDatasetsConfined(t *testing.T) {
	e := newEnv(t, func(c *lifecycle.Config, o *api.Options) {
		c.DatasetLimits.MaxBytes = 4096
		c.DatasetLimits.MaxRecords = 3
	})
	outside := t.TempDir()
	secretFile := filepath.Join(outside, "secret.jsonl")
	os.WriteFile(secretFile, []byte(`{"prompt":"a","response":"b"}`+"\n"), 0o600)
	os.Symlink(secretFile, filepath.Join(e.datasets, "link.jsonl"))
	const secret = "TOP-SECRET-d41d8cd9"
	os.WriteFile(filepath.Join(e.datasets, "secret-malformed.jsonl"), []byte(secret+"\n"), 0o600)
	os.WriteFile(filepath.Join(e.datasets, "secret-role.jsonl"),
		[]byte(`{"messages":[{"role":"`+secret+`","content":"q"},{"role":"assistant","content":"r"}]}`+"\n"), 0o600)
	os.WriteFile(filepath.Join(e.datasets, "big.jsonl"), []byte(strings.Repeat(`{"prompt":"a","response":"b"}`+"\n", 200)), 0o600)
	os.WriteFile(filepath.Join(e.datasets, "many.jsonl"), []byte(strings.Repeat(`{"prompt":"a","response":"b"}`+"\n", 4)), 0o600)
	fifo := filepath.Join(e.datasets, "fifo.jsonl")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Should the service block on the FIFO, a writer lets it go.
		if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
	})
	cases := []struct {
		name, uri, code, mentions string
	}{
		{"outside", "file://" + secretFile, "dataset_not_allowed", "--dataset-root"},
		{"absolute path outside", secretFile, "dataset_not_allowed", "--dataset-root"},
		{"dot-dot", "file://" + e.datasets + "/../" + filepath.Base(outside) + "/secret.jsonl", "dataset_not_allowed", "--dataset-root"},
		{"symlink out", "file://" + filepath.Join(e.datasets, "link.jsonl"), "dataset_not_allowed", "--dataset-root"},
		{"etc", "file:///etc/passwd", "dataset_not_allowed", "--dataset-root"},
		{"fifo", "file://" + fifo, "invalid_dataset", "regular file"},
		{"malformed secret", "file://" + filepath.Join(e.datasets, "secret-malformed.jsonl"), "invalid_dataset", "line 1"},
		{"secret role", "file://" + filepath.Join(e.datasets, "secret-role.jsonl"), "invalid_dataset", "role"},
		{"too many bytes", "file://" + filepath.Join(e.datasets, "big.jsonl"), "dataset_too_large", "--max-dataset-bytes"},
		{"too many records", "file://" + filepath.Join(e.datasets, "many.jsonl"), "dataset_too_large", "--max-dataset-records"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", e.srv.URL+"/api/v1/training/start", strings.NewReader(fileStart(c.uri, 1)))
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("start: %v (a request that hangs is the bug)", err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 422 || !strings.Contains(string(raw), `"code": "`+c.code+`"`) || !strings.Contains(string(raw), c.mentions) {
				t.Errorf("got %d %s, want 422 %s mentioning %q", resp.StatusCode, raw, c.code, c.mentions)
			}
			if strings.Contains(string(raw), secret) {
				t.Errorf("the response quotes the file: %s", raw)
			}
		})
	}
	// Nothing was stored; a dataset under the root is taken.
	os.WriteFile(filepath.Join(e.datasets, "good.jsonl"), []byte(`{"prompt":"a","response":"b"}`+"\n"), 0o600)
	if code, out := e.do(t, "POST", "/api/v1/training/start", token, fileStart("file://"+filepath.Join(e.datasets, "good.jsonl"), 1)); code != 202 {
		t.Fatalf("a dataset under the root: %d %v", code, out)
	}

	// No roots: local datasets are off, and the answer says how to turn them on.
	off := newEnv(t, func(c *lifecycle.Config, o *api.Options) { c.DatasetRoots = nil })
	code, out := off.do(t, "POST", "/api/v1/training/start", token, fileStart("file://"+filepath.Join(e.datasets, "good.jsonl"), 1))
	if code != 422 || errCode(t, out) != "dataset_not_allowed" || !strings.Contains(errMessage(out), "disabled") || !strings.Contains(errMessage(out), "--dataset-root") {
		t.Fatalf("no roots: %d %v", code, out)
	}
}

// A local slm_type must lie under --model-root; a hub id is untouched.
func TestLocalModelsConfined(t *testing.T) {
	e := newEnv(t)
	model := filepath.Join(e.models, "tiny")
	os.MkdirAll(model, 0o700)
	for name, slm := range map[string]string{"outside": t.TempDir(), "etc": "/etc", "dot-dot": e.models + "/../"} {
		code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": "m-" + name, "slm_type": slm}))
		if code != 422 || errCode(t, out) != "invalid_model" || !strings.Contains(errMessage(out), "--model-root") {
			t.Errorf("%s: %d %v", name, code, out)
		}
	}
	if code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": "m-ok", "slm_type": model})); code != 202 {
		t.Fatalf("a model under the root: %d %v", code, out)
	}
	off := newEnv(t, func(c *lifecycle.Config, o *api.Options) { c.ModelRoots = nil })
	code, out := off.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"slm_type": model}))
	if code != 422 || errCode(t, out) != "invalid_model" || !strings.Contains(errMessage(out), "--model-root") {
		t.Fatalf("no model roots: %d %v", code, out)
	}
}

// Inline pairs are streamed: the count is capped, and odd but valid shapes still work.
func TestInlinePairs(t *testing.T) {
	e := newEnv(t, func(c *lifecycle.Config, o *api.Options) { o.MaxPairs = 3 })
	pairs := func(n int) []map[string]string {
		var out []map[string]string
		for i := 0; i < n; i++ {
			out = append(out, map[string]string{"prompt": fmt.Sprint("p", i), "response": "r"})
		}
		return out
	}
	code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"training_pairs": pairs(4), "training_pairs_count": 4}))
	if code != 422 || errCode(t, out) != "too_many_pairs" || !strings.Contains(errMessage(out), "--max-pairs") {
		t.Fatalf("too many pairs: %d %v", code, out)
	}
	// Pairs over several lines, the field given twice (the last counts), fields after it.
	pretty := `{"training_pairs": [{"prompt":"x","response":"y"}],
	  "train_id":"pp","endpoint_id":"ep-1","version":1,"training_pairs_count":2,
	  "training_pairs": [
	    {"prompt": "a",
	     "response": "b"},
	    {"response": "d", "prompt": "c"}
	  ],
	  "slm_type":"microsoft/DialoGPT-small","source_llm":"gpt","provider":"local"}`
	code, out = e.do(t, "POST", "/api/v1/training/start", token, pretty)
	if code != 202 {
		t.Fatalf("pretty pairs: %d %v", code, out)
	}
	raw, err := os.ReadFile(filepath.Join(e.data, "datasets", "pp.jsonl"))
	if err != nil || string(raw) != `{"prompt":"a","response":"b"}`+"\n"+`{"response": "d", "prompt": "c"}`+"\n" {
		t.Fatalf("dataset copy %q %v", raw, err)
	}
	// The same request again is the same job; the pairs in another order are another.
	if code, out = e.do(t, "POST", "/api/v1/training/start", token, pretty); code != 200 {
		t.Fatalf("the same start again: %d %v", code, out)
	}
	for name, c := range map[string]struct {
		body   string
		status int
		code   string
	}{
		"null pairs":        {body(map[string]any{"training_pairs": nil}) + "", 422, "missing_dataset"},
		"object pairs":      {body(map[string]any{"training_pairs": map[string]any{"a": []int{1}}}), 400, "invalid_field"},
		"unterminated":      {strings.TrimSuffix(body(nil), "}"), 400, "invalid_json"},
		"trailing":          {body(nil) + "x", 400, "invalid_json"},
		"pairs then broken": {`{"training_pairs":[{"prompt":"a","response":"b"},`, 400, "invalid_json"},
	} {
		code, out := e.do(t, "POST", "/api/v1/training/start", token, c.body)
		if code != c.status || errCode(t, out) != c.code {
			t.Errorf("%s: %d %v, want %d %s", name, code, out, c.status, c.code)
		}
	}
	// No spool file is left behind.
	entries, _ := os.ReadDir(filepath.Join(e.data, "datasets"))
	for _, en := range entries {
		if strings.HasPrefix(en.Name(), ".") {
			t.Errorf("left in the datasets dir: %s", en.Name())
		}
	}
}

// The max_duration_seconds default applies to a start without one.
func TestDefaultMaxDurationApplied(t *testing.T) {
	e := newEnv(t, func(c *lifecycle.Config, o *api.Options) { c.DefaultMaxDuration = 24 * time.Hour })
	_, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": "d1"}))
	if out["max_duration_seconds"] != float64(86400) {
		t.Errorf("absent: %v", out["max_duration_seconds"])
	}
	_, out = e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": "d2", "max_duration_seconds": 0}))
	if v, ok := out["max_duration_seconds"]; ok && v != float64(0) {
		t.Errorf("explicit 0: %v", v)
	}
}

// A start beyond --max-queued is a 429 with Retry-After and a JSON body, and stores nothing.
func TestQueueFullIs429(t *testing.T) {
	e := newEnv(t, func(c *lifecycle.Config, o *api.Options) { c.MaxConcurrent = 1; c.MaxQueued = 1 })
	if code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": "q1"})); code != 202 {
		t.Fatalf("q1: %d %v", code, out)
	}
	waitStatus(t, e, "q1", "provisioning")
	if code, out := e.do(t, "POST", "/api/v1/training/start", token, body(map[string]any{"train_id": "q2"})); code != 202 {
		t.Fatalf("q2: %d %v", code, out)
	}
	req, _ := http.NewRequest("POST", e.srv.URL+"/api/v1/training/start", strings.NewReader(body(map[string]any{"train_id": "q3"})))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || resp.Header.Get("Content-Type") != "application/json" ||
		!strings.Contains(string(raw), `"queue_full"`) || !strings.Contains(string(raw), "--max-queued") {
		t.Fatalf("q3: %d %v %s", resp.StatusCode, resp.Header, raw)
	}
	if code, _ := e.do(t, "GET", "/api/v1/training/q3/status", token, ""); code != 404 {
		t.Fatalf("the refused start was stored: %d", code)
	}
	if _, err := os.Stat(filepath.Join(e.data, "datasets", "q3.jsonl")); !os.IsNotExist(err) {
		t.Fatalf("the refused start's dataset was stored: %v", err)
	}
}

func waitStatus(t *testing.T, e *env, id, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, out := e.do(t, "GET", "/api/v1/training/"+id+"/status", token, "")
		if out["status"] == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v, want %s", id, out["status"], want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func openStream(t *testing.T, url string) (*http.Response, error) {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	return http.DefaultClient.Do(req)
}

// Log streams are capped; the JSON log is not a stream and stays available.
func TestLogStreamsCapped(t *testing.T) {
	e := newEnv(t, func(c *lifecycle.Config, o *api.Options) { o.MaxStreams = 1; o.PollInterval = 20 * time.Millisecond })
	e.do(t, "POST", "/api/v1/training/start", token, body(nil))
	first, err := openStream(t, e.srv.URL+"/api/v1/training/t1/logs")
	if err != nil || first.StatusCode != 200 {
		t.Fatalf("first stream: %v %v", first, err)
	}
	second, err := openStream(t, e.srv.URL+"/api/v1/training/t1/logs")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(second.Body)
	second.Body.Close()
	if second.StatusCode != 429 || second.Header.Get("Retry-After") == "" || !strings.Contains(string(raw), "too_many_streams") || !strings.Contains(string(raw), "--max-streams") {
		t.Fatalf("second stream: %d %v %s", second.StatusCode, second.Header, raw)
	}
	if code, out := e.do(t, "GET", "/api/v1/training/t1/logs?follow=false", token, ""); code != 200 {
		t.Fatalf("follow=false: %d %v", code, out)
	}
	first.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, err := openStream(t, e.srv.URL+"/api/v1/training/t1/logs")
		if err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("a closed stream's place was not freed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The server's timeouts: a log stream outlives the read timeout (it ends with the job),
// and the unauthenticated completed call cannot hold a connection with a body that
// trickles in.
func TestServerTimeouts(t *testing.T) {
	var h http.Handler
	e := newEnv(t, func(c *lifecycle.Config, o *api.Options) {
		o.PollInterval = 20 * time.Millisecond
		o.CompletedReadTimeout = 300 * time.Millisecond
	})
	h = e.srv.Config.Handler
	srv := httptest.NewUnstartedServer(h)
	srv.Config = api.NewHTTPServer(context.Background(), h)
	srv.Config.ReadTimeout = 500 * time.Millisecond
	srv.Start()
	defer srv.Close()
	e.do(t, "POST", "/api/v1/training/start", token, body(nil))

	resp, err := openStream(t, srv.URL+"/api/v1/training/t1/logs")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("stream: %v %v", resp, err)
	}
	time.AfterFunc(1500*time.Millisecond, func() { e.do(t, "POST", "/api/v1/training/t1/cancel", token, "") })
	sc := bufio.NewScanner(resp.Body)
	var last string
	for sc.Scan() {
		if ev, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
			last = ev
		}
	}
	resp.Body.Close()
	if last != "end" {
		t.Fatalf("the stream ended without its end event (last %q): cut by the read timeout", last)
	}

	// Through a server without a read timeout: the handler's own deadline must end it.
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/v1/training/t1/completed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\nContent-Length: 1000\r\n\r\n{")
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	_, err = io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("a trickling body held the completed call for %s", time.Since(start))
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("the completed call took %s to give up on its body", time.Since(start))
	}
}
