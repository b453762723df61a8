package lifecycle

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/hubcheck"
	"github.com/understudy-ai/training-service/job"
)

// A job's copy of its dataset goes when the job ends, and a restarted service deletes the
// copies that ended jobs (or a stopped service) left behind.
func TestDatasetCopyRemovedWhenTheJobEnds(t *testing.T) {
	h := newHarness(t, Config{})
	h.drv.Start(context.Background())
	j := h.submit("ends")
	if _, err := os.Stat(j.Internal.DatasetPath); err != nil {
		t.Fatalf("dataset copy missing while the job runs: %v", err)
	}
	h.waitFor("ends", job.StatusCompleted)
	waitGone(t, j.Internal.DatasetPath)

	// A terminal job whose copy is still there (an older service, or one stopped at the
	// wrong moment), and a copy of no job at all.
	h.prov.provisionWait = make(chan struct{})
	live := h.submit("live")
	left := filepath.Join(h.dir, "datasets", "ends.jsonl")
	orphan := filepath.Join(h.dir, "datasets", "nobody.jsonl")
	for _, p := range []string{left, orphan} {
		if err := os.WriteFile(p, []byte("{}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h.restart(Config{})
	for _, p := range []string{left, orphan} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived a restart (%v)", p, err)
		}
	}
	if _, err := os.Stat(live.Internal.DatasetPath); err != nil {
		t.Errorf("the dataset of a live job was removed: %v", err)
	}
	close(h.prov.provisionWait)
	h.waitFor("live", job.StatusCompleted)
	waitGone(t, live.Internal.DatasetPath)
}

func waitGone(t *testing.T, p string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still exists after its job ended", p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A local slm_type must lie under a --model-root, and what is uploaded of it is read
// through that root: a link out of it fails the upload.
func TestLocalModelsConfinedToRoots(t *testing.T) {
	roots := t.TempDir()
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "id_ed25519"), []byte("private"), 0o600)
	model := filepath.Join(roots, "tiny")
	os.MkdirAll(model, 0o700)
	os.WriteFile(filepath.Join(model, "config.json"), []byte("{}"), 0o600)
	leaky := filepath.Join(roots, "leaky")
	os.MkdirAll(leaky, 0o700)
	os.WriteFile(filepath.Join(leaky, "config.json"), []byte("{}"), 0o600)
	if err := os.Symlink(filepath.Join(outside, "id_ed25519"), filepath.Join(leaky, "weights.bin")); err != nil {
		t.Fatal(err)
	}
	os.Symlink(outside, filepath.Join(roots, "escape"))

	h := newHarness(t, Config{ModelRoots: []string{roots}})
	h.drv.Start(context.Background())
	submit := func(id, slm string) error {
		req := request(id, 2)
		req.Spec.SLMType = slm
		_, _, err := h.drv.Submit(context.Background(), req)
		return err
	}
	for name, slm := range map[string]string{
		"elsewhere":    outside,
		"dot-dot":      roots + "/tiny/../../" + filepath.Base(outside),
		"root escapes": filepath.Join(roots, "escape"),
		"missing":      filepath.Join(roots, "nope"),
		"etc":          "/etc",
	} {
		err := submit("m-"+strings.ReplaceAll(name, " ", "-"), slm)
		if job.ReasonOf(err) != job.ReasonInvalidModel || !strings.Contains(job.MessageOf(err), "--model-root") && name != "missing" {
			t.Errorf("%s (%s): %v, want %s naming --model-root", name, slm, err, job.ReasonInvalidModel)
		}
	}
	if err := submit("hub", "microsoft/DialoGPT-small"); err != nil {
		t.Errorf("a hub id: %v", err)
	}
	if err := submit("tiny", model); err != nil {
		t.Fatalf("a model under the root: %v", err)
	}
	h.waitFor("tiny", job.StatusCompleted)
	if !h.conn.uploaded["/w/tiny/model/config.json"] {
		t.Errorf("the model was not uploaded: %v", h.conn.uploaded)
	}
	// The upload reads the model through its root: a link out of it is refused when read
	// (what sshrunner's Upload does with every file), though the submit check passed.
	if err := submit("leaky", leaky); err != nil {
		t.Fatalf("submit leaky: %v", err)
	}
	fsys, done, ok, err := h.drv.modelFS(leaky)
	if err != nil || !ok {
		t.Fatalf("modelFS: %v %v", ok, err)
	}
	defer done()
	if _, err := fs.ReadFile(fsys, "config.json"); err != nil {
		t.Errorf("a file of the model: %v", err)
	}
	if raw, err := fs.ReadFile(fsys, "weights.bin"); err == nil {
		t.Errorf("read %q through a link out of the model root", raw)
	}
	if _, err := fs.Stat(fsys, "weights.bin"); err == nil {
		t.Errorf("stat through a link out of the model root")
	}

	// No roots: no local models at all.
	h2 := newHarness(t, Config{})
	req := request("none", 2)
	req.Spec.SLMType = model
	if _, _, err := h2.drv.Submit(context.Background(), req); job.ReasonOf(err) != job.ReasonInvalidModel || !strings.Contains(job.MessageOf(err), "--model-root") {
		t.Errorf("no model roots: %v", err)
	}
}

// A start beyond MaxQueued waiting jobs is refused and stores nothing; the same request
// again for a stored job is still answered.
func TestQueueCap(t *testing.T) {
	h := newHarness(t, Config{MaxConcurrent: 1, MaxQueued: 2})
	h.prov.provisionWait = make(chan struct{})
	defer close(h.prov.provisionWait)
	h.drv.Start(context.Background())
	h.submit("q1")
	h.waitFor("q1", job.StatusProvisioning)
	h.submit("q2")
	h.submit("q3")
	_, _, err := h.drv.Submit(context.Background(), request("q4", 2))
	if job.CodeOf(err) != job.CodeResourceExhausted || job.ReasonOf(err) != ReasonQueueFull || !strings.Contains(job.MessageOf(err), "--max-queued") {
		t.Fatalf("a start past the queue: %v", err)
	}
	if _, err := h.store.JobGet(context.Background(), "q4"); job.CodeOf(err) != job.CodeNotFound {
		t.Fatalf("the refused start stored a job: %v", err)
	}
	if _, created, err := h.drv.Submit(context.Background(), request("q2", 2)); err != nil || created {
		t.Fatalf("the same start again: %v (created %v)", err, created)
	}
	if _, err := h.drv.Cancel(context.Background(), "q3"); err != nil {
		t.Fatal(err)
	}
	h.waitFor("q3", job.StatusCancelled)
	waitFor(t, func() bool { _, _, err := h.drv.Submit(context.Background(), request("q4", 2)); return err == nil })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A start without max_duration_seconds takes the default; an explicit 0 keeps none.
func TestDefaultMaxDuration(t *testing.T) {
	h := newHarness(t, Config{DefaultMaxDuration: 24 * time.Hour})
	h.prov.provisionWait = make(chan struct{})
	defer close(h.prov.provisionWait)
	h.drv.Start(context.Background())
	for _, c := range []struct {
		id   string
		give int
		none bool
		want int
	}{{"absent", 0, false, 86400}, {"explicit-zero", 0, true, 0}, {"given", 60, false, 60}} {
		req := request(c.id, 2)
		req.Spec.MaxDurationSeconds = c.give
		req.NoMaxDuration = c.none
		j, _, err := h.drv.Submit(context.Background(), req)
		if err != nil || j.MaxDurationSeconds != c.want {
			t.Errorf("%s: %v, max_duration_seconds %d, want %d", c.id, err, j.MaxDurationSeconds, c.want)
		}
	}
}

// recordingHub answers from a table (absent: found), records what it was asked, and keeps
// a question about "org/slow" waiting until its context ends.
type recordingHub struct {
	mu    sync.Mutex
	asked []string
	errs  map[string]error
}

func (r *recordingHub) Check(ctx context.Context, id string) error {
	r.mu.Lock()
	r.asked = append(r.asked, id)
	r.mu.Unlock()
	if id == "org/slow" {
		<-ctx.Done()
		return ctx.Err()
	}
	return r.errs[id]
}

// The Hub check sees only slm_types that are not local paths, only for new jobs, and each
// refusal becomes an InvalidArgument error with the reason of its kind, storing nothing.
func TestSubmitChecksHubIDs(t *testing.T) {
	hub := &recordingHub{errs: map[string]error{
		"org/gone": &hubcheck.Error{Kind: hubcheck.ErrNotFound, ID: "org/gone", Endpoint: "http://hub.test", Cause: "it answered HTTP 404"},
		"org/far":  &hubcheck.Error{Kind: hubcheck.ErrUnreachable, ID: "org/far", Endpoint: "http://hub.test", Cause: "connection refused"},
		"a/b/c":    hubcheck.ValidID("a/b/c"),
		"org/odd":  errors.New("something else"),
	}}
	roots := t.TempDir()
	model := filepath.Join(roots, "tiny")
	os.MkdirAll(model, 0o700)
	h := newHarness(t, Config{ModelRoots: []string{roots}, Hub: hub})
	h.drv.Start(context.Background())
	submit := func(ctx context.Context, id, slm string) error {
		req := request(id, 2)
		req.Spec.SLMType = slm
		_, _, err := h.drv.Submit(ctx, req)
		return err
	}
	for slm, want := range map[string]struct {
		code   job.Code
		reason string
	}{
		"org/gone": {job.CodeInvalidArgument, ReasonModelNotFound},
		"org/far":  {job.CodeInvalidArgument, ReasonModelUnavailable},
		"a/b/c":    {job.CodeInvalidArgument, job.ReasonInvalidModel},
		"org/odd":  {job.CodeUnknown, ""},
	} {
		id := "h-" + strings.NewReplacer("/", "-").Replace(slm)
		err := submit(context.Background(), id, slm)
		if job.CodeOf(err) != want.code || job.ReasonOf(err) != want.reason {
			t.Errorf("%s: %v (code %s, reason %q), want %s %q", slm, err, job.CodeOf(err), job.ReasonOf(err), want.code, want.reason)
		}
		if _, err := h.store.JobGet(context.Background(), id); job.CodeOf(err) != job.CodeNotFound {
			t.Errorf("%s: the refused start was stored (%v)", slm, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := submit(ctx, "h-cancelled", "org/slow"); job.CodeOf(err) != job.CodeCanceled {
		t.Errorf("a start whose request ended: %v, want %s", err, job.CodeCanceled)
	}

	hub.mu.Lock()
	hub.asked = nil
	hub.mu.Unlock()
	for _, slm := range []string{model, "./models/x", "../x", "file://" + model} {
		submit(context.Background(), "h-local", slm)
	}
	if err := submit(context.Background(), "h-ok", "org/ok"); err != nil {
		t.Fatalf("a model the Hub has: %v", err)
	}
	if err := submit(context.Background(), "h-ok", "org/ok"); err != nil {
		t.Fatalf("the same start again: %v", err)
	}
	hub.mu.Lock()
	defer hub.mu.Unlock()
	if len(hub.asked) != 1 || hub.asked[0] != "org/ok" {
		t.Errorf("the Hub was asked about %q, want only the new job's Hub id", hub.asked)
	}
}
