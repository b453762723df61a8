package lifecycle

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/job"
)

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) JobChanged(ctx context.Context, c Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, c)
}

func (r *recorder) statuses(id string) (from, to []job.Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.changes {
		if c.Kind == ChangeStatus && c.Job.TrainID == id {
			from = append(from, c.From)
			to = append(to, c.Job.Status)
		}
	}
	return from, to
}

func TestObserverSeesEveryTransition(t *testing.T) {
	rec := &recorder{}
	h := newHarness(t, Config{Observers: []Observer{rec, ObserverFunc(func(context.Context, Change) { panic("a bad observer") })}})
	h.drv.Start(context.Background())
	h.submit("obs")
	h.waitFor("obs", job.StatusCompleted)

	from, to := rec.statuses("obs")
	want := []job.Status{job.StatusQueued, job.StatusProvisioning, job.StatusUploading, job.StatusTraining,
		job.StatusDownloading, job.StatusTearingDown, job.StatusCompleted}
	if !slices.Equal(to, want) {
		t.Fatalf("statuses seen %v, want %v", to, want)
	}
	wantFrom := append([]job.Status{""}, want[:len(want)-1]...)
	if !slices.Equal(from, wantFrom) {
		t.Fatalf("from statuses %v, want %v", from, wantFrom)
	}
	// Every change carries the job as stored then; the last one is the finished job.
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var last *job.Job
	progressSeen := false
	for _, c := range rec.changes {
		if c.Kind == ChangeProgress {
			progressSeen = true
		}
		if c.Kind == ChangeStatus {
			if c.Job.Timestamps[c.Job.Status].IsZero() && c.Job.Status != job.StatusQueued {
				t.Errorf("%s: no timestamp in the observed job", c.Job.Status)
			}
			last = c.Job
		}
	}
	if !progressSeen {
		t.Error("no progress change observed")
	}
	if last.WeightsURI == "" || last.CostUSD <= 0 || last.Machine == nil {
		t.Fatalf("the completed job as observed: %+v", last)
	}
}

func TestObserverSeesFailureAndResume(t *testing.T) {
	rec := &recorder{}
	h := newHarness(t, Config{TeardownAttempts: 1, Observers: []Observer{rec}})
	h.prov.provisionErr = job.Errorf(job.CodeUnavailable, "no machine today")
	h.drv.Start(context.Background())
	h.submit("obsfail")
	h.waitFor("obsfail", job.StatusFailed)
	_, to := rec.statuses("obsfail")
	want := []job.Status{job.StatusQueued, job.StatusProvisioning, job.StatusTearingDown, job.StatusFailed}
	if !slices.Equal(to, want) {
		t.Fatalf("statuses seen %v, want %v", to, want)
	}

	// A job left mid-flight by a stopped process is reported as resumed by the next one.
	h.prov.mu.Lock()
	h.prov.provisionErr = nil
	h.prov.mu.Unlock()
	h.conn.hold = make(chan struct{})
	h.submit("obsres")
	h.waitFor("obsres", job.StatusTraining)
	rec2 := &recorder{}
	h.restart(Config{Observers: []Observer{rec2}})
	close(h.conn.hold)
	h.waitFor("obsres", job.StatusCompleted)
	rec2.mu.Lock()
	first := rec2.changes[0]
	rec2.mu.Unlock()
	if first.Kind != ChangeResumed || first.Job.TrainID != "obsres" || first.Job.Status != job.StatusTraining {
		t.Fatalf("first change after restart: %+v %s", first, first.Job.Status)
	}
}

// An observer that blocks would hold up the job; the contract forbids it, and the Driver
// must at least call each observer once per change, in order, from the job's goroutine.
func TestObserverOrderPerJob(t *testing.T) {
	var mu sync.Mutex
	last := map[string]int{}
	order := map[job.Status]int{}
	for i, s := range job.Statuses {
		order[s] = i
	}
	bad := false
	obs := ObserverFunc(func(_ context.Context, c Change) {
		if c.Kind != ChangeStatus {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if order[c.Job.Status] < last[c.Job.TrainID] {
			bad = true
		}
		last[c.Job.TrainID] = order[c.Job.Status]
	})
	h := newHarness(t, Config{Observers: []Observer{obs}})
	h.drv.Start(context.Background())
	for _, id := range []string{"o1", "o2", "o3"} {
		h.submit(id)
	}
	for _, id := range []string{"o1", "o2", "o3"} {
		h.waitFor(id, job.StatusCompleted)
	}
	mu.Lock()
	defer mu.Unlock()
	if bad {
		t.Fatal("a job's status changes reached the observer out of order")
	}
}

// syncBuffer is a bytes.Buffer safe for the Driver's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// serviceWide are the log messages that concern the service, not one job.
var serviceWide = map[string]bool{
	"failpoints armed: jobs pause there (a test hook)": true,
	"list stacks for the reaper":                       true,
	"sweep datasets":                                   true,
	"remove orphaned machine":                          true,
	"removed orphaned machine":                         true,
}

func TestEveryJobLogLineHasTrainID(t *testing.T) {
	var buf syncBuffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := newHarnessLog(t, Config{TeardownAttempts: 2}, log)
	h.prov.teardownFails = 1 // a retried destroy logs a warning
	h.drv.Start(context.Background())
	h.submit("logs-ok")
	h.waitFor("logs-ok", job.StatusCompleted)

	h.conn.hold = make(chan struct{})
	h.submit("logs-cancel")
	h.waitFor("logs-cancel", job.StatusTraining)
	if _, err := h.drv.Cancel(context.Background(), "logs-cancel"); err != nil {
		t.Fatal(err)
	}
	h.waitFor("logs-cancel", job.StatusCancelled)

	h.prov.mu.Lock()
	h.prov.provisionErr = job.Errorf(job.CodeUnavailable, "no machine today")
	h.prov.mu.Unlock()
	h.submit("logs-fail")
	h.waitFor("logs-fail", job.StatusFailed)
	time.Sleep(50 * time.Millisecond) // the goroutines' last lines

	lines := buf.lines()
	if len(lines) < 10 {
		t.Fatalf("only %d log lines", len(lines))
	}
	seen := map[string]bool{}
	for _, l := range lines {
		msg, _ := l["msg"].(string)
		id, ok := l["train_id"].(string)
		if !ok || id == "" {
			if !serviceWide[msg] {
				t.Errorf("log line without train_id: %v", l)
			}
			continue
		}
		seen[id] = true
	}
	for _, id := range []string{"logs-ok", "logs-cancel", "logs-fail"} {
		if !seen[id] {
			t.Errorf("no log line for %s", id)
		}
	}
}

func TestGPUSampleReachesProgress(t *testing.T) {
	h := newHarness(t, Config{})
	h.conn.lines = append([]string{okLines[0], okLines[1],
		`{"v":1,"event":"step","time":3,"step":2,"total_steps":2,"epoch":1,"loss":1.5,"learning_rate":0.0,"tokens_per_second":10,"eta_seconds":0,"gpu_utilization":0.5,"gpu_memory_bytes":1024}`},
		okLines[3:]...)
	h.drv.Start(context.Background())
	h.submit("gpu")
	j := h.waitFor("gpu", job.StatusCompleted)
	if p := j.Progress; p.GPUUtilization == nil || *p.GPUUtilization != 0.5 || p.GPUMemoryBytes == nil || *p.GPUMemoryBytes != 1024 {
		t.Fatalf("progress: %+v", p)
	}
	// A step without a sample (a CPU machine) leaves none in the status document.
	raw, _ := json.Marshal(h.waitFor("gpu", job.StatusCompleted).Progress)
	if !bytes.Contains(raw, []byte(`"gpu_utilization":0.5`)) {
		t.Fatalf("progress document: %s", raw)
	}
	h2 := newHarness(t, Config{})
	h2.drv.Start(context.Background())
	h2.submit("cpu")
	raw, _ = json.Marshal(h2.waitFor("cpu", job.StatusCompleted).Progress)
	if bytes.Contains(raw, []byte("gpu_")) {
		t.Fatalf("a CPU job's progress document shows GPU fields: %s", raw)
	}
}
