package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/servicetest"
)

// post sends a start body as raw bytes (or a reader) and returns the status and body.
func post(t *testing.T, s *servicetest.Service, body io.Reader) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+s.Addr+"/api/v1/training/start", body)
	req.Header.Set("Authorization", "Bearer "+s.Token)
	client := &http.Client{Timeout: 2 * time.Minute}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw)
}

// The real service reads local datasets and models only under its --dataset-root and
// --model-root, never blocks on a FIFO, never quotes a dataset in an error, and refuses
// local datasets altogether without a root.
func TestLocalPathsConfined(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	s := servicetest.New(t, bin, python)
	s.Start()
	dir := t.TempDir() // under the test's temp root, a --dataset-root of servicetest's service
	fifo := filepath.Join(dir, "fifo.jsonl")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	const secret = "E2E-SECRET-0b5f"
	secretFile := filepath.Join(dir, "secret.jsonl")
	os.WriteFile(secretFile, []byte(`{"prompt":"a","response":"b"}`+"\n"+secret+"\n"), 0o600)
	outside, err := os.MkdirTemp(filepath.Dir(s.Data), "outside-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(outside)
	os.WriteFile(filepath.Join(outside, "pairs.jsonl"), []byte(`{"prompt":"a","response":"b"}`+"\n"), 0o600)
	os.Symlink(filepath.Join(outside, "pairs.jsonl"), filepath.Join(dir, "link.jsonl"))

	start := func(id, slm, uri string) (int, string) {
		b := startBody(id, slm, "", 1, map[string]any{"epochs": 1})
		b["dataset_uri"] = uri
		raw, _ := json.Marshal(b)
		return post(t, s, bytes.NewReader(raw))
	}
	for _, c := range []struct {
		name, slm, uri string
		code           int
		reason, says   string
	}{
		{"etc passwd", model, "file:///etc/passwd", 422, "dataset_not_allowed", "--dataset-root"},
		{"data dir", model, "file://" + filepath.Join(s.Data, "api-token"), 422, "dataset_not_allowed", "--dataset-root"},
		{"outside", model, "file://" + filepath.Join(outside, "pairs.jsonl"), 422, "dataset_not_allowed", "--dataset-root"},
		{"symlink out", model, "file://" + filepath.Join(dir, "link.jsonl"), 422, "dataset_not_allowed", "--dataset-root"},
		{"fifo", model, "file://" + fifo, 422, "invalid_dataset", "regular file"},
		{"secret", model, "file://" + secretFile, 422, "invalid_dataset", "line 2"},
		{"model outside", "/etc", "file://" + servicetest.WritePairs(t, 1), 422, "invalid_model", "--model-root"},
		{"model data dir", s.Data, "file://" + servicetest.WritePairs(t, 1), 422, "invalid_model", "--model-root"},
	} {
		t.Run(c.name, func(t *testing.T) {
			began := time.Now()
			code, body := start("hard-"+strings.ReplaceAll(c.name, " ", "-"), c.slm, c.uri)
			if code != c.code || !strings.Contains(body, `"`+c.reason+`"`) || !strings.Contains(body, c.says) {
				t.Errorf("got %d %s, want %d %s saying %q", code, body, c.code, c.reason, c.says)
			}
			if strings.Contains(body, secret) {
				t.Errorf("the answer quotes the dataset: %s", body)
			}
			if d := time.Since(began); d > 30*time.Second {
				t.Errorf("took %s", d)
			}
		})
	}
	var list struct {
		Jobs []any `json:"jobs"`
	}
	if s.Request("GET", "/api/v1/training", nil, &list); len(list.Jobs) != 0 {
		t.Fatalf("refused starts stored jobs: %v", list.Jobs)
	}

	// Without roots, local datasets are off and the answer names the flag.
	off := servicetest.New(t, bin, python)
	off.DatasetRoots = nil
	off.Start()
	b := startBody("off", model, servicetest.WritePairs(t, 1), 1, nil)
	raw, _ := json.Marshal(b)
	code, body := post(t, off, bytes.NewReader(raw))
	if code != 422 || !strings.Contains(body, "dataset_not_allowed") || !strings.Contains(body, "disabled") || !strings.Contains(body, "--dataset-root") {
		t.Fatalf("no roots: %d %s", code, body)
	}
}

// With --hub-check on, a slm_type taken as a Hugging Face id is asked about at the Hub
// before anything is made: an unreachable Hub (--hub-endpoint) and a missing model (at the
// Hub HF_ENDPOINT names) are refused, no job is stored and no stack made.
func TestHubIDCheckedBeforeAStack(t *testing.T) {
	bin, python, _ := servicetest.Prerequisites(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	hub := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(hub.Close)

	unreachable := servicetest.New(t, bin, python)
	unreachable.Args = []string{"--hub-check", "--hub-endpoint", closed}
	missing := servicetest.New(t, bin, python)
	missing.Args = []string{"--hub-check=true"}
	missing.Env = []string{"HF_ENDPOINT=" + hub.URL}
	for _, c := range []struct {
		s            *servicetest.Service
		reason, says string
	}{
		{unreachable, "model_unavailable", "the Hub at " + closed + " could not be reached from the service (connection refused)"},
		{missing, "model_not_found", "the Hub at " + hub.URL + " has no such model"},
	} {
		c.s.Start()
		raw, _ := json.Marshal(startBody("hub-"+c.reason, "microsoft/DialoGPT-small", servicetest.WritePairs(t, 1), 1, nil))
		code, body := post(t, c.s, bytes.NewReader(raw))
		if code != 422 || !strings.Contains(body, `"`+c.reason+`"`) || !strings.Contains(body, c.says) ||
			!strings.Contains(body, "taken as a Hugging Face Hub id") {
			t.Errorf("got %d %s, want 422 %s saying %q", code, body, c.reason, c.says)
		}
		if code := c.s.Request("GET", "/api/v1/training/hub-"+c.reason+"/status", nil, nil); code != 404 {
			t.Errorf("the refused start was stored: %d", code)
		}
		if names := c.s.StackNames(); len(names) != 0 {
			t.Errorf("stacks after a refused start: %v", names)
		}
	}
}

// A job's copy of its dataset is deleted when the job ends, and a restarted service
// deletes a copy left for a job that had already ended.
func TestDatasetCopyDeleted(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	s := servicetest.New(t, bin, python)
	s.Start()
	if code := s.Request("POST", "/api/v1/training/start", startBody("hard-del", model, servicetest.WritePairs(t, 400), 400,
		map[string]any{"epochs": 100, "max_seq_len": 64, "batch_size": 4}), nil); code != 202 {
		t.Fatalf("start: %d", code)
	}
	copyPath := filepath.Join(s.Data, "datasets", "hard-del.jsonl")
	if _, err := os.Stat(copyPath); err != nil {
		t.Fatalf("no dataset copy while the job runs: %v", err)
	}
	s.WaitFor("hard-del", 5*time.Minute, "training", func(j servicetest.Job) bool { return j.Status == "training" })
	if code := s.Request("POST", "/api/v1/training/hard-del/cancel", nil, nil); code != 202 {
		t.Fatalf("cancel: %d", code)
	}
	s.WaitFor("hard-del", 3*time.Minute, "cancelled", func(j servicetest.Job) bool { return j.Status == "cancelled" })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(copyPath); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dataset copy of an ended job is still there")
		}
		time.Sleep(100 * time.Millisecond)
	}
	assertTornDown(t, s, "hard-del")

	s.Stop()
	os.WriteFile(copyPath, []byte(`{"prompt":"a","response":"b"}`+"\n"), 0o600)
	s.Start()
	if _, err := os.Stat(copyPath); !os.IsNotExist(err) {
		t.Fatalf("a restarted service kept the dataset copy of an ended job (%v)", err)
	}
}

// The unauthenticated completed endpoint does not wait forever for a body that trickles.
func TestSlowCompletedBodyIsCut(t *testing.T) {
	bin, python, _ := servicetest.Prerequisites(t)
	s := servicetest.New(t, bin, python)
	s.Start()
	conn, err := net.Dial("tcp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/v1/training/x/completed HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer x\r\nContent-Length: 100000\r\n\r\n{", s.Addr)
	began := time.Now()
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	_, err = io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the connection was still open after %s", time.Since(began))
	}
	t.Logf("cut after %s", time.Since(began))
}

// startStream generates a start body of n inline pairs as it is read.
type startStream struct {
	n, i, size int
	head, done bool
	buf        bytes.Buffer
	read       int64
}

func (g *startStream) Read(p []byte) (int, error) {
	for g.buf.Len() < len(p) && !g.done {
		switch {
		case !g.head:
			// training_pairs_count is one short: the start is refused after the whole body
			// was read and checked, so no job runs.
			fmt.Fprintf(&g.buf, `{"train_id":"hard-big","endpoint_id":"ep","version":1,"training_pairs_count":%d,"slm_type":"microsoft/DialoGPT-small","source_llm":"s","provider":"local","training_pairs":[`, g.n-1)
			g.head = true
		case g.i < g.n:
			if g.i > 0 {
				g.buf.WriteByte(',')
			}
			fmt.Fprintf(&g.buf, `{"prompt":"question %d %s","response":"answer"}`, g.i, strings.Repeat("x", g.size))
			g.i++
		default:
			g.buf.WriteString("]}")
			g.done = true
		}
	}
	n, err := g.buf.Read(p)
	g.read += int64(n)
	if err == io.EOF && !g.done {
		err = nil
	}
	return n, err
}

// peakRSS is the process's high-water resident set size in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// A start with about 50 MB of inline pairs raises the service's peak memory by far less
// than its size: the body is decoded as it arrives and the pairs go to disk.
func TestLargeStartMemoryBounded(t *testing.T) {
	bin, python, _ := servicetest.Prerequisites(t)
	s := servicetest.New(t, bin, python)
	s.Start()
	pid, _ := s.Running()
	before := peakRSS(t, pid)
	g := &startStream{n: 100_000, size: 480}
	code, body := post(t, s, g)
	if code != 422 || !strings.Contains(body, "pairs_count_mismatch") {
		t.Fatalf("start: %d %s", code, body)
	}
	after := peakRSS(t, pid)
	grew := after - before
	t.Logf("peak RSS %d MiB → %d MiB for a %d MiB body", before>>20, after>>20, g.read>>20)
	if g.read < 50<<20 {
		t.Fatalf("the body was only %d bytes", g.read)
	}
	if grew > g.read/2 {
		t.Fatalf("peak RSS grew by %d MiB for a %d MiB body", grew>>20, g.read>>20)
	}
	if entries, _ := os.ReadDir(filepath.Join(s.Data, "datasets")); len(entries) != 0 {
		t.Fatalf("the refused start left files: %v", entries)
	}
}
