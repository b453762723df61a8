package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/servicetest"
)

// The fake Lambda Cloud's gpu_1x_h100_pcie is $2.49 an hour: $0.0007 a second. A budget of
// $0.04 is reached about 58 seconds after the machine is up: after the first training steps,
// long before the job (400 pairs, 100 epochs) could finish.
const (
	budgetGPU       = "gpu_1x_h100_pcie"
	budgetGPUPrice  = 2.49
	budgetMaxCost   = 0.04
	budgetSecondsAt = budgetMaxCost / budgetGPUPrice * 3600
)

func TestBudgetStopsTheJobAndKeepsItsCheckpoint(t *testing.T) {
	t.Parallel()
	e := newCloudEnv(t, "lambda", nil)
	id := "budget-lambda"
	body := startBody(id, e.model, servicetest.WritePairs(t, 400), 400, map[string]any{"epochs": 100, "max_seq_len": 32, "batch_size": 2})
	for k, v := range map[string]any{"provider": "lambda", "gpu_type": budgetGPU, "max_cost_usd": budgetMaxCost, "keep_checkpoint": true} {
		body[k] = v
	}
	if code := e.s.Request("POST", "/api/v1/training/start", body, nil); code != 202 {
		t.Fatalf("start: %d", code)
	}
	j := e.s.WaitFor(id, 5*time.Minute, "a terminal status", terminal)
	if j.Status != "failed" || j.Error == nil || j.Error.Code != "budget_exceeded" {
		t.Fatalf("job ended %s %+v, want failed budget_exceeded", j.Status, j.Error)
	}
	if want := fmt.Sprintf("max_cost_usd of $%.4f", budgetMaxCost); !strings.Contains(j.Error.Message, want) {
		t.Errorf("message %q does not name the limit (%s)", j.Error.Message, want)
	}
	if j.Machine == nil || j.Machine.HourlyPriceUSD != budgetGPUPrice {
		t.Fatalf("machine %+v, want the fake's $%v/h %s", j.Machine, budgetGPUPrice, budgetGPU)
	}
	// Stopped once the limit was reached, not long after: the budget is checked every few
	// seconds, the runtime checkpoints and the machine goes within the minute.
	if j.CostUSD < budgetMaxCost || j.CostUSD > budgetMaxCost+budgetGPUPrice/60 {
		t.Errorf("cost_usd %v, want from the limit %v to a minute more (%.0f s held at most)", j.CostUSD, budgetMaxCost, budgetSecondsAt+60)
	}
	if j.Progress.Step < 1 {
		t.Fatalf("stopped at step %d: the budget ran out before training (raise budgetMaxCost)", j.Progress.Step)
	}

	var st struct {
		CheckpointURI      string `json:"checkpoint_uri"`
		CheckpointManifest []struct {
			Path   string `json:"path"`
			SHA256 string `json:"sha256"`
		} `json:"checkpoint_manifest"`
	}
	if code := e.s.Request("GET", "/api/v1/training/"+id+"/status", nil, &st); code != 200 {
		t.Fatalf("status: %d", code)
	}
	prefix := "/ep-e2e/v1/" + id + "/checkpoint/step-"
	if !strings.HasPrefix(st.CheckpointURI, "file://") || !strings.Contains(st.CheckpointURI, prefix) {
		t.Fatalf("checkpoint_uri %q, want the weights store under %s…; events:\n%s", st.CheckpointURI, prefix, e.events(id))
	}
	root := strings.TrimPrefix(st.CheckpointURI, "file://")
	seen := map[string]bool{}
	for _, f := range st.CheckpointManifest {
		raw, err := os.ReadFile(filepath.Join(root, f.Path))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(raw)
		if hex.EncodeToString(sum[:]) != f.SHA256 {
			t.Errorf("%s does not match its manifest entry", f.Path)
		}
		seen[f.Path] = true
	}
	for _, want := range []string{"model.pt", "optimizer.pt", "rng.pt", "trainer_state.json"} {
		if !seen[want] {
			t.Errorf("checkpoint lacks %s: %+v", want, st.CheckpointManifest)
		}
	}
	e.assertTornDown(id)
}

// events returns the job's lifecycle events as lines, for failure messages.
func (e *cloudEnv) events(id string) string {
	var evs struct {
		Events []struct{ Type, Status, Message string } `json:"events"`
	}
	e.s.Request("GET", "/api/v1/training/"+id+"/events", nil, &evs)
	var b strings.Builder
	for _, ev := range evs.Events {
		fmt.Fprintf(&b, "%s %s: %s\n", ev.Status, ev.Type, ev.Message)
	}
	return b.String()
}
