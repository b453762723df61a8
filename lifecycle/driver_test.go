package lifecycle

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/job"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestJobCompletes(t *testing.T) {
	h := newHarness(t, Config{})
	h.drv.Start(context.Background())
	h.submit("ok")
	j := h.waitFor("ok", job.StatusCompleted)
	if h.prov.has("ok") {
		t.Fatal("stack left behind")
	}
	if j.Progress.Step != 2 || *j.Progress.Loss != 1.5 || *j.Progress.EvalLoss != 1.7 {
		t.Fatalf("progress not folded: %+v", j.Progress)
	}
	if j.WeightsURI != "file:///weights/ep/v1/ok/" || len(j.Manifest.Files) != 1 || j.Manifest.Metrics["eval_loss_after"] != 1.7 {
		t.Fatalf("weights: %q %+v", j.WeightsURI, j.Manifest)
	}
	for _, st := range []job.Status{job.StatusQueued, job.StatusProvisioning, job.StatusUploading, job.StatusTraining, job.StatusDownloading, job.StatusTearingDown, job.StatusCompleted} {
		if j.Timestamps[st].IsZero() {
			t.Errorf("no timestamp for %s", st)
		}
	}
	if j.Machine == nil || j.Machine.InstanceID != "fake-ok" || j.CostUSD <= 0 {
		t.Fatalf("machine/cost: %+v %v", j.Machine, j.CostUSD)
	}
	if _, err := os.Stat(keyPath(h.dir, "ok")); !os.IsNotExist(err) {
		t.Fatalf("job key left behind: %v", err)
	}
	for _, p := range []string{"/w/ok/runtime/launch.sh", "/w/ok/data/train.jsonl", "/w/ok/job.env"} {
		if !h.conn.uploaded[p] {
			t.Errorf("%s not uploaded (have %v)", p, h.conn.uploaded)
		}
	}
	logs, _ := h.store.LogList(context.Background(), "ok", 0, 0)
	progressLines := 0
	for _, l := range logs {
		if l.Stream == "progress" {
			progressLines++
		}
	}
	if progressLines != len(okLines) {
		t.Fatalf("%d progress lines logged, want %d", progressLines, len(okLines))
	}
}

func TestSameRequestIsIdempotentDifferentConflicts(t *testing.T) {
	h := newHarness(t, Config{})
	h.submit("idem")
	j, created, err := h.drv.Submit(context.Background(), request("idem", 2))
	if err != nil || created || j.TrainID != "idem" {
		t.Fatalf("repeat: %v created=%v", err, created)
	}
	_, _, err = h.drv.Submit(context.Background(), request("idem", 3))
	if job.CodeOf(err) != job.CodeAlreadyExists {
		t.Fatalf("different body: %v", err)
	}
}

func TestPairsCountMismatch(t *testing.T) {
	h := newHarness(t, Config{})
	req := request("count", 2)
	req.Spec.TrainingPairsCount = 5
	_, _, err := h.drv.Submit(context.Background(), req)
	if job.ReasonOf(err) != "pairs_count_mismatch" {
		t.Fatalf("got %v", err)
	}
	if _, err := h.store.JobGet(context.Background(), "count"); job.CodeOf(err) != job.CodeNotFound {
		t.Fatalf("a refused job was stored: %v", err)
	}
}

func TestTeardownRetriesThenSucceeds(t *testing.T) {
	h := newHarness(t, Config{TeardownAttempts: 3})
	h.prov.teardownFails = 2
	h.drv.Start(context.Background())
	h.submit("retry")
	h.waitFor("retry", job.StatusCompleted)
	if h.prov.teardowns != 3 {
		t.Fatalf("%d teardown calls, want 3", h.prov.teardowns)
	}
}

func TestTeardownFailsForGood(t *testing.T) {
	h := newHarness(t, Config{TeardownAttempts: 2})
	h.prov.teardownFails = 100
	h.drv.Start(context.Background())
	h.submit("stuck")
	j := h.waitFor("stuck", job.StatusFailed)
	if j.Error == nil || j.Error.Code != job.ReasonTeardownFailed || !contains(j.Error.Message, "pulumi destroy --stack stuck") {
		t.Fatalf("error = %+v", j.Error)
	}
}

func TestCancelWhileProvisioning(t *testing.T) {
	h := newHarness(t, Config{})
	h.prov.provisionWait = make(chan struct{})
	h.drv.Start(context.Background())
	h.submit("cp")
	h.waitFor("cp", job.StatusProvisioning)
	if _, err := h.drv.Cancel(context.Background(), "cp"); err != nil {
		t.Fatal(err)
	}
	h.waitFor("cp", job.StatusCancelled)
	if h.prov.has("cp") {
		t.Fatal("stack of a cancelled job left behind")
	}
	if _, err := h.drv.Cancel(context.Background(), "cp"); job.CodeOf(err) != job.CodeFailedPrecondition {
		t.Fatalf("cancel of a terminal job: %v", err)
	}
}

func TestCancelWhileQueued(t *testing.T) {
	h := newHarness(t, Config{MaxConcurrent: 1})
	h.prov.provisionWait = make(chan struct{})
	h.drv.Start(context.Background())
	h.submit("first")
	h.waitFor("first", job.StatusProvisioning)
	h.submit("second")
	if _, err := h.drv.Cancel(context.Background(), "second"); err != nil {
		t.Fatal(err)
	}
	j := h.waitFor("second", job.StatusCancelled)
	if j.Timestamps[job.StatusProvisioning] != (time.Time{}) {
		t.Fatal("a job cancelled while queued was provisioned")
	}
	close(h.prov.provisionWait)
	h.waitFor("first", job.StatusCompleted)
}

func TestCancelWhileTraining(t *testing.T) {
	h := newHarness(t, Config{})
	h.conn.hold = make(chan struct{})
	h.drv.Start(context.Background())
	h.submit("ct")
	h.waitFor("ct", job.StatusTraining)
	h.drv.Cancel(context.Background(), "ct")
	j := h.waitFor("ct", job.StatusCancelled)
	if h.prov.has("ct") || j.Error != nil {
		t.Fatalf("stack left or error set: %+v", j.Error)
	}
}

func TestMaxDuration(t *testing.T) {
	h := newHarness(t, Config{})
	h.conn.hold = make(chan struct{})
	h.drv.Start(context.Background())
	req := request("slow", 2)
	req.Spec.MaxDurationSeconds = 1
	if _, _, err := h.drv.Submit(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	j := h.waitFor("slow", job.StatusFailed)
	if j.Error.Code != job.ReasonTimeout || h.prov.has("slow") {
		t.Fatalf("error %+v", j.Error)
	}
}

func TestRuntimeBadInputFailsWithItsCode(t *testing.T) {
	h := newHarness(t, Config{})
	h.conn.lines = []string{`{"v":1,"event":"error","time":1,"code":"invalid_model","message":"no model at x"}`}
	h.conn.exitCode = 2
	h.drv.Start(context.Background())
	h.submit("badmodel")
	j := h.waitFor("badmodel", job.StatusFailed)
	if j.Error.Code != "invalid_model" || j.Error.Message != "no model at x" || h.prov.has("badmodel") {
		t.Fatalf("error %+v", j.Error)
	}
}

func TestProvisionFailureTearsDown(t *testing.T) {
	h := newHarness(t, Config{})
	h.prov.provisionErr = job.Errorf(job.CodeResourceExhausted, "no GPU capacity")
	h.drv.Start(context.Background())
	h.submit("nocap")
	j := h.waitFor("nocap", job.StatusFailed)
	if j.Error.Code != job.ReasonProvisionFailed || !contains(j.Error.Message, "no GPU capacity") || h.prov.has("nocap") {
		t.Fatalf("error %+v", j.Error)
	}
}

func TestReconnectsAfterDroppedConnection(t *testing.T) {
	h := newHarness(t, Config{})
	h.conn.dropOnce = true
	h.drv.Start(context.Background())
	h.submit("drop")
	h.waitFor("drop", job.StatusCompleted)
	logs, _ := h.store.LogList(context.Background(), "drop", 0, 0)
	n := 0
	for _, l := range logs {
		if l.Stream == "progress" {
			n++
		}
	}
	if n != len(okLines) {
		t.Fatalf("%d progress lines after a reconnect, want exactly %d", n, len(okLines))
	}
}

func TestWaitsForABootingMachineToPresentThePinnedKey(t *testing.T) {
	h := newHarness(t, Config{})
	h.conn.mismatchFirst = 2
	h.drv.Start(context.Background())
	h.submit("boot")
	h.waitFor("boot", job.StatusCompleted)
	events, _ := h.store.EventList(context.Background(), "boot")
	found := false
	for _, e := range events {
		found = found || e.Type == "host_key_pending"
	}
	if !found {
		t.Fatal("no host_key_pending event while the machine presented another key")
	}
}

func TestHostKeyMismatchAfterTheFirstContactFailsAtOnce(t *testing.T) {
	h := newHarness(t, Config{ConnectTimeout: time.Minute})
	h.conn.dropOnce = true
	h.conn.mismatchLater = true // the first connection succeeds; after the drop, another key
	start := time.Now()
	h.drv.Start(context.Background())
	h.submit("swap")
	j := h.waitFor("swap", job.StatusFailed)
	if j.Error == nil || j.Error.Code != job.ReasonMachineLost || !strings.Contains(j.Error.Message, "host key") {
		t.Fatalf("error = %+v, want machine_lost naming the host key", j.Error)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("took %v: a mismatch after first contact must not be retried", d)
	}
}

func TestRestartResumesTraining(t *testing.T) {
	h := newHarness(t, Config{Owner: "first"})
	h.conn.hold = make(chan struct{})
	h.drv.Start(context.Background())
	h.submit("resume")
	h.waitFor("resume", job.StatusTraining)
	// Let the first line be recorded before the "crash".
	time.Sleep(1500 * time.Millisecond)
	h.restart(Config{Owner: "second"})
	h.waitFor("resume", job.StatusTraining)
	close(h.conn.hold)
	j := h.waitFor("resume", job.StatusCompleted)
	if h.conn.started != 1 {
		t.Fatalf("the run was started %d times, want once", h.conn.started)
	}
	evs, _ := h.store.EventList(context.Background(), "resume")
	resumed := false
	for _, e := range evs {
		resumed = resumed || e.Type == "resumed"
	}
	if !resumed || j.Progress.Step != 2 {
		t.Fatalf("resumed=%v progress=%+v", resumed, j.Progress)
	}
	if stored, _ := h.store.JobGet(context.Background(), "resume"); stored.Internal.Owner != "second" {
		t.Fatalf("owner %q after the restart, want the instance that resumed the job", stored.Internal.Owner)
	}
}

// After an operator destroyed a stuck job's stack while the service was down, the
// restarted service ends the job at once instead of redialling the gone machine.
func TestRestartNoticesAStackDestroyedMeanwhile(t *testing.T) {
	h := newHarness(t, Config{})
	h.conn.hold = make(chan struct{})
	defer close(h.conn.hold)
	h.drv.Start(context.Background())
	h.submit("gone")
	h.waitFor("gone", job.StatusTraining)
	time.Sleep(500 * time.Millisecond)
	// The "operator" destroys the stack; the machine no longer answers.
	h.prov.mu.Lock()
	delete(h.prov.stacks, "gone")
	h.prov.mu.Unlock()
	h.conn.mu.Lock()
	h.conn.dropForever = true
	h.conn.mu.Unlock()
	start := time.Now()
	h.restart(Config{InspectAfter: 10 * time.Minute, ReconnectTimeout: 10 * time.Minute})
	j := h.waitFor("gone", job.StatusFailed)
	if j.Error == nil || j.Error.Code != job.ReasonMachineLost || !strings.Contains(j.Error.Message, "destroyed outside the service") {
		t.Fatalf("error %+v, want machine_lost naming the destroyed stack", j.Error)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("took %v to notice", d)
	}
}

func TestReaperDestroysOrphanedStacks(t *testing.T) {
	h := newHarness(t, Config{})
	h.prov.stacks["orphan"] = true
	h.drv.Start(context.Background())
	deadline := time.Now().Add(5 * time.Second)
	for h.prov.has("orphan") {
		if time.Now().After(deadline) {
			t.Fatal("orphaned stack not destroyed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func TestRestartDuringDownloadDownloadsAgain(t *testing.T) {
	h := newHarness(t, Config{})
	h.conn.downloadHold = make(chan struct{})
	h.drv.Start(context.Background())
	h.submit("dl")
	h.waitFor("dl", job.StatusDownloading)
	h.restart(Config{})
	close(h.conn.downloadHold)
	j := h.waitFor("dl", job.StatusCompleted)
	if h.conn.downloads < 2 || j.Manifest == nil || h.prov.has("dl") {
		t.Fatalf("downloads %d, manifest %+v", h.conn.downloads, j.Manifest)
	}
}

func TestRestartDuringTeardownKeepsTheOutcome(t *testing.T) {
	h := newHarness(t, Config{TeardownTimeout: 200 * time.Millisecond, TeardownAttempts: 1000})
	h.prov.teardownHold = make(chan struct{})
	h.drv.Start(context.Background())
	h.submit("td")
	h.waitFor("td", job.StatusTearingDown)
	// The stop is not cancelled by the shutdown: teardown goes on, so stop with a short
	// deadline, as a second signal would, and start again.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	h.drv.Stop(ctx)
	cancel()
	h.store.Close()
	h.open(Config{})
	h.drv.Start(context.Background())
	close(h.prov.teardownHold)
	j := h.waitFor("td", job.StatusCompleted)
	if h.prov.has("td") || j.Error != nil || j.WeightsURI == "" {
		t.Fatalf("after restart in teardown: %+v", j)
	}
}

func TestPanicInAJobTearsDownAndFails(t *testing.T) {
	h := newHarness(t, Config{})
	h.prov.provisionPanics = true
	h.drv.Start(context.Background())
	h.submit("boom")
	j := h.waitFor("boom", job.StatusFailed)
	if j.Error.Code != job.ReasonInternal || h.prov.has("boom") {
		t.Fatalf("error %+v, stack left %v", j.Error, h.prov.has("boom"))
	}
	// The service goes on: another job still completes.
	h.prov.mu.Lock()
	h.prov.provisionPanics = false
	h.prov.mu.Unlock()
	h.submit("after")
	h.waitFor("after", job.StatusCompleted)
}
