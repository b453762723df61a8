package lifecycle

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/job"
)

const ckptListing = "step-00000001\n" +
	"1111111111111111111111111111111111111111111111111111111111111111  ./trainer_state.json\n" +
	"2222222222222222222222222222222222222222222222222222222222222222  ./adapter.pt\n"

// The first machine's runtime: two steps, a checkpoint at step 1, then the machine goes.
var firstMachineLines = []string{
	`{"v":1,"event":"start","time":1,"model":"m","total_steps":4,"epochs":1,"pairs_used":2,"pairs_skipped":0,"device":"cpu"}`,
	`{"v":1,"event":"step","time":2,"step":1,"total_steps":4,"epoch":0.25,"loss":2.5,"learning_rate":0.1,"tokens_per_second":10,"eta_seconds":3}`,
	`{"v":1,"event":"checkpoint","time":3,"step":1,"path":"step-00000001","reason":"interval"}`,
	`{"v":1,"event":"step","time":4,"step":2,"total_steps":4,"epoch":0.5,"loss":2.0,"learning_rate":0.1,"tokens_per_second":10,"eta_seconds":2}`,
}

// The replacement's runtime resumes from step 1.
var resumedLines = []string{
	`{"v":1,"event":"start","time":1,"model":"m","total_steps":4,"epochs":1,"pairs_used":2,"pairs_skipped":0,"device":"cpu","resumed_from_step":1}`,
	`{"v":1,"event":"step","time":2,"step":2,"total_steps":4,"epoch":0.5,"loss":2.0,"learning_rate":0.1,"tokens_per_second":10,"eta_seconds":2}`,
	`{"v":1,"event":"step","time":3,"step":3,"total_steps":4,"epoch":0.75,"loss":1.8,"learning_rate":0.1,"tokens_per_second":10,"eta_seconds":1}`,
	`{"v":1,"event":"step","time":4,"step":4,"total_steps":4,"epoch":1,"loss":1.5,"learning_rate":0.0,"tokens_per_second":10,"eta_seconds":0}`,
	`{"v":1,"event":"done","time":5,"output_dir":"out","files":[{"path":"model.safetensors","size":1,"sha256":"aa"}],"metrics":{"eval_loss_after":1.7}}`,
}

func hasEvent(t *testing.T, h *harness, id, typ string) bool {
	t.Helper()
	evs, err := h.drv.Events(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.Type == typ {
			return true
		}
	}
	return false
}

// newPreemptedHarness is a harness, started, whose first machine writes a checkpoint at
// step 1 and is preempted after step 2; the replacement resumes and completes.
func newPreemptedHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	cfg.ReconnectTimeout, cfg.InspectAfter = time.Hour, 10*time.Millisecond
	h := newHarness(t, cfg)
	h.prov.preemptFirst = true
	h.conn.lines, h.conn.secondLines = firstMachineLines, resumedLines
	h.conn.dropOnce, h.conn.dropAt, h.conn.dropAfterDownload = true, 2, true
	h.conn.runOutput = func(cmd string) []byte {
		if strings.Contains(cmd, "trainer_state.json") {
			return []byte(ckptListing)
		}
		return nil
	}
	h.drv.Start(context.Background())
	return h
}

// A spot machine preempted mid-training is replaced; the new one gets the checkpoint copied
// off the old one and training continues from its step.
func TestPreemptedMachineIsReplacedAndResumesFromTheCheckpoint(t *testing.T) {
	h := newPreemptedHarness(t, Config{})
	h.submit("recover")
	j := h.waitFor("recover", job.StatusCompleted)
	if j.Progress.Step != 4 || j.Progress.TotalSteps != 4 {
		t.Errorf("progress %+v, want step 4 of 4", j.Progress)
	}
	if len(j.Attempts) != 2 {
		t.Fatalf("attempts %+v, want 2", j.Attempts)
	}
	a1, a2 := j.Attempts[0], j.Attempts[1]
	if a1.Reason != job.ReasonPreempted || a1.Step != 1 || a1.EndedAt == nil || a1.InstanceID != "fake-recover" || a1.CostUSD <= 0 {
		t.Errorf("first attempt %+v, want preempted at step 1 on fake-recover with its cost", a1)
	}
	if a2.Number != 2 || a2.ResumedFromStep != 1 || a2.Reason != string(job.StatusCompleted) || a2.InstanceID != "fake-recover-2" || a2.Step != 4 {
		t.Errorf("second attempt %+v, want resumed from step 1 and completed", a2)
	}
	if !hasEvent(t, h, "recover", "checkpoint_copied") {
		t.Error("no checkpoint_copied event")
	}
	// Once the job ended, the checkpoint is of no more use (checkpoints_test.go).
	h.waitForgotten("recover")
	h.conn.mu.Lock()
	restored := append([]string(nil), h.conn.restored...)
	h.conn.mu.Unlock()
	if len(restored) != 1 || restored[0] != "ep/v1/recover/checkpoint/step-00000001 -> /w/recover/ckpt/step-00000001" {
		t.Errorf("restored %v, want the checkpoint into the new machine's ckpt dir", restored)
	}
	if h.prov.provisioned != 2 || h.prov.has("recover") {
		t.Errorf("provisioned %d machines, stack left %v", h.prov.provisioned, h.prov.has("recover"))
	}
	if j.CostUSD < a1.CostUSD {
		t.Errorf("cost %v does not include the first machine's %v", j.CostUSD, a1.CostUSD)
	}
}

// A machine taken away on every attempt ends the job failed, with its reason, once the
// attempts are used; the history lists each.
func TestReplacementsStopAtMaxAttempts(t *testing.T) {
	h := newHarness(t, Config{ReconnectTimeout: time.Hour, InspectAfter: 10 * time.Millisecond, MaxAttempts: 2})
	h.conn.dropForever = true
	h.prov.health = &MachineHealth{Exists: true, Running: false, Preempted: true, Status: "EXITED"}
	h.drv.Start(context.Background())
	h.submit("spot")
	j := h.waitFor("spot", job.StatusFailed)
	if j.Error == nil || j.Error.Code != job.ReasonPreempted || !strings.Contains(j.Error.Message, "after 2 attempts") {
		t.Fatalf("error = %+v, want preempted after 2 attempts", j.Error)
	}
	if len(j.Attempts) != 2 {
		t.Fatalf("attempts %+v, want 2", j.Attempts)
	}
	for _, a := range j.Attempts {
		if a.Reason != job.ReasonPreempted || a.EndedAt == nil {
			t.Errorf("attempt %+v, want ended preempted", a)
		}
	}
	if h.prov.provisioned != 2 || h.prov.has("spot") {
		t.Errorf("provisioned %d, stack left %v", h.prov.provisioned, h.prov.has("spot"))
	}
}

// Without a stored checkpoint the replacement trains from the first step, and says so.
func TestReplacementWithoutACheckpointStartsOver(t *testing.T) {
	h := newHarness(t, Config{ReconnectTimeout: time.Hour, InspectAfter: 10 * time.Millisecond})
	h.prov.preemptFirst = true
	h.conn.lines, h.conn.secondLines = firstMachineLines[:2], okLines
	h.conn.dropOnce, h.conn.dropAt = true, 1
	h.drv.Start(context.Background())
	h.submit("scratch")
	j := h.waitFor("scratch", job.StatusCompleted)
	if len(j.Attempts) != 2 || j.Attempts[1].ResumedFromStep != 0 || j.Internal.LastCheckpoint != nil {
		t.Fatalf("attempts %+v, checkpoint %+v: want a second attempt from the start", j.Attempts, j.Internal.LastCheckpoint)
	}
	if len(h.conn.restored) != 0 {
		t.Errorf("restored %v without a checkpoint", h.conn.restored)
	}
	if !hasEvent(t, h, "scratch", "training_from_scratch") {
		t.Error("no training_from_scratch event")
	}
	if j.Progress.Step != 2 || j.Progress.TotalSteps != 2 {
		t.Errorf("progress %+v", j.Progress)
	}
}

// A service stopped while it replaces a machine finishes the replacement when it starts
// again: the destroy is run again and the job completes on a new machine.
func TestRestartWhileReplacingAMachine(t *testing.T) {
	cfg := Config{ReconnectTimeout: time.Hour, InspectAfter: 10 * time.Millisecond}
	h := newHarness(t, cfg)
	h.prov.preemptFirst = true
	hold := make(chan struct{})
	h.prov.teardownHold = hold
	h.conn.lines, h.conn.secondLines = firstMachineLines, resumedLines
	h.conn.dropOnce, h.conn.dropAt, h.conn.dropAfterDownload = true, 2, true
	h.conn.runOutput = func(cmd string) []byte {
		if strings.Contains(cmd, "trainer_state.json") {
			return []byte(ckptListing)
		}
		return nil
	}
	h.drv.Start(context.Background())
	h.submit("mid")
	deadline := time.Now().Add(10 * time.Second)
	for {
		j, err := h.store.JobGet(context.Background(), "mid")
		if err != nil {
			t.Fatal(err)
		}
		// The job is marked replacing before its old machine's destroy starts: wait for
		// both, or the destroy could miss the hold and finish before the restart.
		h.prov.mu.Lock()
		held := h.prov.teardownsHeld
		if j.Internal.Replacing && held > 0 {
			// The destroy under way is held; the next one is not.
			h.prov.teardownHold = nil
		}
		h.prov.mu.Unlock()
		if j.Internal.Replacing && held > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job never started destroying the machine it replaces: %s %+v, %d destroys held", j.Status, j.Error, held)
		}
		time.Sleep(10 * time.Millisecond)
	}
	h.restart(cfg)
	close(hold)
	j := h.waitFor("mid", job.StatusCompleted)
	if len(j.Attempts) != 2 || j.Attempts[1].ResumedFromStep != 1 || j.Progress.Step != 4 {
		t.Fatalf("attempts %+v, progress %+v: want the second machine to resume from step 1 and finish", j.Attempts, j.Progress)
	}
	if h.prov.has("mid") {
		t.Fatal("stack left behind")
	}
	h.prov.mu.Lock()
	n := h.prov.teardowns
	h.prov.mu.Unlock()
	if n != 2 {
		t.Errorf("%d destroys done, want 2: the held one, cut short by the stop, runs again after the restart; then the final one", n)
	}
}
