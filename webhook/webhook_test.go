package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/lifecycle"
)

const secret = "whsec-test"

func render(j *job.Job) ([]byte, error) { return json.MarshalIndent(j, "", "  ") }

type got struct {
	header http.Header
	body   []byte
}

// receiver is an httptest server that records deliveries and answers with codes, in turn
// (the last one repeats); nil codes: 204.
type receiver struct {
	mu    sync.Mutex
	codes []int
	calls []got
	srv   *httptest.Server
	hold  chan struct{} // when set, every request waits for it
}

func newReceiver(t *testing.T, codes ...int) *receiver {
	r := &receiver{codes: codes}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.calls = append(r.calls, got{req.Header.Clone(), body})
		code := http.StatusNoContent
		if len(r.codes) > 0 {
			code = r.codes[0]
			if len(r.codes) > 1 {
				r.codes = r.codes[1:]
			}
		}
		hold := r.hold
		r.mu.Unlock()
		if hold != nil {
			select {
			case <-hold:
			case <-req.Context().Done():
			}
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) got() []got {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]got(nil), r.calls...)
}

func (r *receiver) waitCalls(t *testing.T, n int) []got {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g := r.got()
		if len(g) >= n {
			return g
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d deliveries, want %d", len(g), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type results struct {
	mu sync.Mutex
	m  map[string]int
}

func (r *results) report(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]int{}
	}
	r.m[s]++
}

func (r *results) get(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m[s]
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, nil))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newNotifier(t *testing.T, url string, res *results, mod func(*Options)) *Notifier {
	t.Helper()
	o := Options{URL: url, Secret: secret, Render: render, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		Timeout: 2 * time.Second, Logger: testLogger(t)}
	if res != nil {
		o.Report = res.report
	}
	if mod != nil {
		mod(&o)
	}
	n, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		n.Close(ctx)
	})
	return n
}

func change(id string, st job.Status) lifecycle.Change {
	return lifecycle.Change{Kind: lifecycle.ChangeStatus, Job: &job.Job{Spec: job.Spec{TrainID: id, Provider: "local"}, Status: st}}
}

func TestDeliverySignedAndVerifiable(t *testing.T) {
	t.Parallel()
	r := newReceiver(t)
	n := newNotifier(t, r.srv.URL, nil, nil)
	n.JobChanged(context.Background(), change("sig", job.StatusTraining))
	g := r.waitCalls(t, 1)[0]
	if err := Verify(secret, g.header.Get(HeaderSignature), g.body, 5*time.Minute); err != nil {
		t.Fatalf("verify: %v (header %q)", err, g.header.Get(HeaderSignature))
	}
	if err := Verify("another-secret", g.header.Get(HeaderSignature), g.body, 5*time.Minute); !errors.Is(err, ErrSignatureMismatch) {
		t.Fatalf("verify with a wrong secret: %v", err)
	}
	tampered := append([]byte(nil), g.body...)
	tampered[len(tampered)-2] ^= 1
	if err := Verify(secret, g.header.Get(HeaderSignature), tampered, 5*time.Minute); !errors.Is(err, ErrSignatureMismatch) {
		t.Fatalf("verify a tampered body: %v", err)
	}
	var doc job.Job
	if err := json.Unmarshal(g.body, &doc); err != nil || doc.Status != job.StatusTraining || doc.TrainID != "sig" {
		t.Fatalf("body %s: %v", g.body, err)
	}
	for h, want := range map[string]string{HeaderEvent: EventStatusChanged, HeaderStatus: "training", HeaderTrainID: "sig",
		HeaderAttempt: "1", "Content-Type": "application/json"} {
		if g.header.Get(h) != want {
			t.Errorf("%s = %q, want %q", h, g.header.Get(h), want)
		}
	}
	if !strings.HasPrefix(g.header.Get(HeaderDelivery), "dlv_") {
		t.Errorf("delivery id %q", g.header.Get(HeaderDelivery))
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	body := []byte(`{"status":"queued"}`)
	now := time.Unix(1_700_000_000, 0)
	h := SignatureHeader(secret, now, body)
	if !strings.HasPrefix(h, "t=1700000000,v1=") {
		t.Fatalf("header %q", h)
	}
	for _, c := range []struct {
		name   string
		header string
		at     time.Time
		tol    time.Duration
		want   error
	}{
		{"valid", h, now.Add(time.Minute), 5 * time.Minute, nil},
		{"no tolerance", h, now.Add(time.Hour), 0, nil},
		{"too old", h, now.Add(6 * time.Minute), 5 * time.Minute, ErrTimestampExpired},
		{"from the future", h, now.Add(-6 * time.Minute), 5 * time.Minute, ErrTimestampExpired},
		{"rotated secret", "t=1700000000,v1=00ff," + h[len("t=1700000000,"):], now, time.Minute, nil},
		{"empty", "", now, time.Minute, ErrNoSignature},
		{"no timestamp", "v1=abcd", now, time.Minute, ErrMalformedHeader},
		{"bad timestamp", "t=x,v1=abcd", now, time.Minute, ErrMalformedHeader},
		{"no signature", "t=1700000000", now, time.Minute, ErrMalformedHeader},
		{"wrong", "t=1700000000,v1=abcd", now, time.Minute, ErrSignatureMismatch},
		{"other timestamp", strings.Replace(h, "t=1700000000", "t=1700000001", 1), now, time.Minute, ErrSignatureMismatch},
	} {
		if err := verifyAt(secret, c.header, body, c.tol, c.at); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func TestRetriesOn500ThenSucceeds(t *testing.T) {
	t.Parallel()
	r := newReceiver(t, 500, 503, 429, 200)
	res := &results{}
	n := newNotifier(t, r.srv.URL, res, nil)
	n.JobChanged(context.Background(), change("retry", job.StatusProvisioning))
	calls := r.waitCalls(t, 4)
	id := calls[0].header.Get(HeaderDelivery)
	for i, c := range calls {
		if c.header.Get(HeaderDelivery) != id {
			t.Errorf("attempt %d has delivery id %q, want the first's %q", i+1, c.header.Get(HeaderDelivery), id)
		}
		if c.header.Get(HeaderAttempt) != string(rune('1'+i)) {
			t.Errorf("attempt header %q at %d", c.header.Get(HeaderAttempt), i+1)
		}
		if err := Verify(secret, c.header.Get(HeaderSignature), c.body, time.Minute); err != nil {
			t.Errorf("attempt %d: %v", i+1, err)
		}
	}
	waitFor(t, func() bool { return res.get(ResultDelivered) == 1 })
	time.Sleep(20 * time.Millisecond)
	if len(r.got()) != 4 {
		t.Fatalf("%d attempts after success, want 4", len(r.got()))
	}
}

func TestGivesUpAfterMaxAttemptsAnd4xxAtOnce(t *testing.T) {
	t.Parallel()
	r := newReceiver(t, 500)
	res := &results{}
	n := newNotifier(t, r.srv.URL, res, func(o *Options) { o.MaxAttempts = 3 })
	n.JobChanged(context.Background(), change("dead", job.StatusQueued))
	waitFor(t, func() bool { return res.get(ResultFailed) == 1 })
	if len(r.got()) != 3 {
		t.Fatalf("%d attempts, want 3", len(r.got()))
	}

	r2 := newReceiver(t, 400)
	res2 := &results{}
	n2 := newNotifier(t, r2.srv.URL, res2, nil)
	n2.JobChanged(context.Background(), change("refused", job.StatusQueued))
	waitFor(t, func() bool { return res2.get(ResultFailed) == 1 })
	if len(r2.got()) != 1 {
		t.Fatalf("a 400 was retried: %d attempts", len(r2.got()))
	}
}

func TestDeliveryIDsUniqueAndOrderKept(t *testing.T) {
	t.Parallel()
	r := newReceiver(t)
	n := newNotifier(t, r.srv.URL, nil, nil)
	sts := []job.Status{job.StatusQueued, job.StatusProvisioning, job.StatusUploading, job.StatusTraining,
		job.StatusDownloading, job.StatusTearingDown, job.StatusCompleted}
	for i := 0; i < 20; i++ {
		for _, st := range sts {
			n.JobChanged(context.Background(), change("uniq", st))
		}
	}
	calls := r.waitCalls(t, 20*len(sts))
	seen := map[string]bool{}
	for i, c := range calls {
		id := c.header.Get(HeaderDelivery)
		if seen[id] {
			t.Fatalf("delivery id %s reused", id)
		}
		seen[id] = true
		if c.header.Get(HeaderStatus) != string(sts[i%len(sts)]) {
			t.Fatalf("delivery %d is %s, want %s: order lost", i, c.header.Get(HeaderStatus), sts[i%len(sts)])
		}
	}
}

func TestSlowReceiverNeverBlocksAndDropsOldest(t *testing.T) {
	t.Parallel()
	r := newReceiver(t)
	r.hold = make(chan struct{})
	res := &results{}
	n := newNotifier(t, r.srv.URL, res, func(o *Options) { o.QueueSize = 3; o.Timeout = 30 * time.Second })
	// The first delivery is taken by the worker and held by the receiver; the rest queue.
	n.JobChanged(context.Background(), change("slow", job.StatusQueued))
	r.waitCalls(t, 1)
	start := time.Now()
	for i := 0; i < 1000; i++ {
		n.JobChanged(context.Background(), change("slow", job.StatusTraining))
	}
	n.JobChanged(context.Background(), change("slow", job.StatusCompleted))
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("queueing 1001 deliveries behind a stuck receiver took %v", d)
	}
	if got := res.get(ResultDropped); got != 1001-3 {
		t.Fatalf("%d dropped, want %d", got, 1001-3)
	}
	close(r.hold)
	calls := r.waitCalls(t, 4)
	if last := calls[3].header.Get(HeaderStatus); last != "completed" {
		t.Fatalf("the newest delivery was dropped: last is %s", last)
	}
}

func TestDeadReceiverCloseDrainsBriefly(t *testing.T) {
	t.Parallel()
	// A receiver that accepts connections and never answers.
	r := newReceiver(t)
	r.hold = make(chan struct{})
	t.Cleanup(func() { close(r.hold) })
	res := &results{}
	n, err := New(Options{URL: r.srv.URL, Secret: secret, Render: render, Timeout: time.Hour, Logger: testLogger(t), Report: res.report})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		n.JobChanged(context.Background(), change("dead", job.StatusQueued))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := n.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("close: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("close took %v", d)
	}
	waitFor(t, func() bool { return res.get(ResultDropped)+res.get(ResultFailed) == 5 })
	// After Close nothing is queued, and the caller is not blocked either.
	n.JobChanged(context.Background(), change("dead", job.StatusCompleted))
	if res.get(ResultDropped)+res.get(ResultFailed) != 6 {
		t.Fatal("a delivery after close was not dropped")
	}
}

func TestOnlyStatusChangesAreSent(t *testing.T) {
	t.Parallel()
	r := newReceiver(t)
	res := &results{}
	n := newNotifier(t, r.srv.URL, res, nil)
	j := &job.Job{Spec: job.Spec{TrainID: "p"}, Status: job.StatusTraining}
	n.JobChanged(context.Background(), lifecycle.Change{Kind: lifecycle.ChangeProgress, Job: j})
	n.JobChanged(context.Background(), lifecycle.Change{Kind: lifecycle.ChangeResumed, Job: j})
	n.JobChanged(context.Background(), change("p", job.StatusDownloading))
	waitFor(t, func() bool { return res.get(ResultDelivered) == 1 })
	if g := r.got(); len(g) != 1 || g[0].header.Get(HeaderStatus) != "downloading" {
		t.Fatalf("deliveries: %d", len(g))
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	for _, o := range []Options{
		{URL: "ftp://x", Secret: "s", Render: render},
		{URL: "https://user:pw@example.com/h", Secret: "s", Render: render},
		{URL: "https://example.com/h", Render: render},
		{URL: "https://example.com/h", Secret: "s"},
		{URL: "/relative", Secret: "s", Render: render},
	} {
		if n, err := New(o); err == nil {
			n.Close(context.Background())
			t.Errorf("%+v accepted", o)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
