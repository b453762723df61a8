package lifecycle

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/job"
)

// A run that is stopped writes a checkpoint and exits 75 (docs/progress-protocol.md).
var (
	stoppableLines = okLines[:2]
	preemptedLines = []string{
		`{"v":1,"event":"checkpoint","time":3,"step":1,"path":"step-00000001","reason":"preempted"}`,
		`{"v":1,"event":"error","time":4,"code":"preempted","message":"received SIGTERM; checkpoint step-00000001 written"}`,
	}
	ckptSum = strings.Repeat("ab", 32)
)

// stoppable makes the harness's run train until it is signalled, then checkpoint and exit;
// its machine holds one checkpoint, step-00000001, whose model.pt has sum ckptSum.
func (h *harness) stoppable() {
	h.conn.lines = stoppableLines
	h.conn.hold = make(chan struct{})
	h.conn.termLines, h.conn.termCode = preemptedLines, 75
	h.conn.runOutput = func(cmd string) []byte {
		if strings.Contains(cmd, "trainer_state.json") {
			return []byte("step-00000001\n" + ckptSum + "  ./model.pt\n")
		}
		return nil
	}
}

func (h *harness) submitSpec(id string, edit func(*job.Spec)) {
	h.t.Helper()
	req := request(id, 2)
	edit(&req.Spec)
	if _, _, err := h.drv.Submit(context.Background(), req); err != nil {
		h.t.Fatalf("submit %s: %v", id, err)
	}
}

func (h *harness) signals() []string {
	h.conn.mu.Lock()
	defer h.conn.mu.Unlock()
	return slices.Clone(h.conn.signals)
}

func (h *harness) assertCheckpointKept(j *job.Job, id string) {
	h.t.Helper()
	want := "file:///weights/ep/v1/" + id + "/checkpoint/step-00000001/"
	if j.CheckpointURI != want || len(j.CheckpointManifest) != 1 || j.CheckpointManifest[0].SHA256 != ckptSum {
		h.t.Errorf("checkpoint %q %+v, want %s holding model.pt", j.CheckpointURI, j.CheckpointManifest, want)
	}
	h.conn.mu.Lock()
	defer h.conn.mu.Unlock()
	if got := strings.Join(h.conn.downloaded, ","); got != "/w/"+id+"/ckpt/step-00000001 -> ep/v1/"+id+"/checkpoint/step-00000001" {
		h.t.Errorf("downloads %q, want the last checkpoint only", got)
	}
}

func TestCancelStopsTheRuntimeAndKeepsItsCheckpoint(t *testing.T) {
	h := newHarness(t, Config{})
	h.stoppable()
	h.drv.Start(context.Background())
	h.submitSpec("keep", func(s *job.Spec) { s.KeepCheckpoint = true })
	h.waitFor("keep", job.StatusTraining)
	time.Sleep(50 * time.Millisecond)
	h.drv.Cancel(context.Background(), "keep")
	j := h.waitFor("keep", job.StatusCancelled)
	if got := h.signals(); !slices.Equal(got, []string{"TERM"}) {
		t.Fatalf("signals %v, want TERM only: the runtime stopped within the grace period", got)
	}
	h.assertCheckpointKept(j, "keep")
	if j.Progress.Step != 1 || j.WeightsURI != "" {
		t.Errorf("progress %+v weights %q", j.Progress, j.WeightsURI)
	}
	if h.prov.has("keep") {
		t.Fatal("stack left behind")
	}
}

func TestCancelWithoutKeepCheckpointStoresNothing(t *testing.T) {
	h := newHarness(t, Config{})
	h.stoppable()
	h.drv.Start(context.Background())
	h.submit("nokeep")
	h.waitFor("nokeep", job.StatusTraining)
	time.Sleep(50 * time.Millisecond)
	h.drv.Cancel(context.Background(), "nokeep")
	j := h.waitFor("nokeep", job.StatusCancelled)
	if !slices.Equal(h.signals(), []string{"TERM"}) || j.CheckpointURI != "" || h.conn.downloads != 0 {
		t.Fatalf("signals %v, checkpoint %q, %d downloads", h.signals(), j.CheckpointURI, h.conn.downloads)
	}
}

func TestTimeoutKillsARuntimeThatIgnoresTerm(t *testing.T) {
	h := newHarness(t, Config{StopGrace: 300 * time.Millisecond})
	h.stoppable()
	h.conn.ignoreTerm = true
	h.drv.Start(context.Background())
	h.submitSpec("hang", func(s *job.Spec) { s.MaxDurationSeconds = 1; s.KeepCheckpoint = true })
	j := h.waitFor("hang", job.StatusFailed)
	if j.Error == nil || j.Error.Code != job.ReasonTimeout {
		t.Fatalf("error %+v, want timeout", j.Error)
	}
	if got := h.signals(); !slices.Equal(got, []string{"TERM", "KILL"}) {
		t.Fatalf("signals %v, want TERM and, after the grace period, KILL", got)
	}
	// The checkpoint on the machine (an interval one) is still kept.
	h.assertCheckpointKept(j, "hang")
	if h.prov.has("hang") {
		t.Fatal("stack left behind")
	}
}

func TestMaxCostStopsTheJob(t *testing.T) {
	// The fake machine costs $3.60/h: $0.001 a second.
	h := newHarness(t, Config{BudgetCheckEvery: 20 * time.Millisecond})
	h.stoppable()
	h.drv.Start(context.Background())
	h.submitSpec("budget", func(s *job.Spec) { s.MaxCostUSD = 0.0005; s.KeepCheckpoint = true })
	j := h.waitFor("budget", job.StatusFailed)
	if j.Error == nil || j.Error.Code != job.ReasonBudgetExceeded || !strings.Contains(j.Error.Message, "max_cost_usd of $0.0005") {
		t.Fatalf("error %+v, want budget_exceeded naming the limit", j.Error)
	}
	if j.CostUSD < 0.0005 {
		t.Errorf("cost_usd %v, want at least the limit that stopped it", j.CostUSD)
	}
	if !slices.Equal(h.signals(), []string{"TERM"}) {
		t.Errorf("signals %v, want TERM", h.signals())
	}
	h.assertCheckpointKept(j, "budget")
	if h.prov.has("budget") {
		t.Fatal("stack left behind")
	}
}

func TestHourlySpendCapMakesJobsWait(t *testing.T) {
	// $3.60/h machines under a $5/h cap: one at a time.
	h := newHarness(t, Config{MaxHourlySpend: 5})
	h.stoppable()
	h.drv.Start(context.Background())
	h.submit("first")
	h.waitFor("first", job.StatusTraining)
	h.submit("second")
	deadline := time.Now().Add(5 * time.Second)
	for !h.hasEvent("second", "waiting_for_budget") {
		if time.Now().After(deadline) {
			t.Fatal("the second job did not wait for the hourly spend")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if j, _ := h.store.JobGet(context.Background(), "second"); j.Status != job.StatusQueued || h.prov.has("second") {
		t.Fatalf("second job is %s (stack %v) while the cap is reached, want queued without a machine", j.Status, h.prov.has("second"))
	}
	h.drv.Cancel(context.Background(), "first")
	h.waitFor("first", job.StatusCancelled)
	h.waitFor("second", job.StatusTraining)
	h.drv.Cancel(context.Background(), "second")
	h.waitFor("second", job.StatusCancelled)
}

func TestMachineOverTheHourlyCapFails(t *testing.T) {
	h := newHarness(t, Config{MaxHourlySpend: 3})
	h.drv.Start(context.Background())
	h.submit("pricey")
	j := h.waitFor("pricey", job.StatusFailed)
	if j.Error == nil || j.Error.Code != job.ReasonBudgetExceeded || !strings.Contains(j.Error.Message, "--max-hourly-spend of $3.0000/h") {
		t.Fatalf("error %+v, want budget_exceeded naming the cap", j.Error)
	}
	if h.prov.has("pricey") || j.CostUSD <= 0 {
		t.Fatalf("stack left %v, cost %v: the machine must be torn down and billed", h.prov.has("pricey"), j.CostUSD)
	}
	// Its price is known now: the next such job fails without making a machine.
	h.submit("pricey-2")
	j = h.waitFor("pricey-2", job.StatusFailed)
	if j.Error == nil || j.Error.Code != job.ReasonBudgetExceeded || h.prov.provisioned != 1 {
		t.Fatalf("error %+v after %d provisions, want budget_exceeded and no second machine", j.Error, h.prov.provisioned)
	}
}

func (h *harness) hasEvent(id, typ string) bool {
	evs, err := h.store.EventList(context.Background(), id)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, e := range evs {
		if e.Type == typ {
			return true
		}
	}
	return false
}
