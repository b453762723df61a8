package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/servicetest"
)

func startBody(id, model, dataset string, pairs int, hp map[string]any) map[string]any {
	return map[string]any{
		"train_id": id, "endpoint_id": "ep-e2e", "version": 1, "training_pairs_count": pairs,
		"slm_type": model, "source_llm": "gpt-3.5-turbo", "provider": "local",
		"dataset_uri": "file://" + dataset, "hyperparameters": hp,
	}
}

// assertTornDown checks that nothing of the job is left: no stack (through the API and
// through the Pulumi CLI an operator would use), no process, no key.
func assertTornDown(t *testing.T, s *servicetest.Service, id string) {
	t.Helper()
	if names := s.StackNames(); slices.Contains(names, id) {
		t.Errorf("stack %s still listed: %v", id, names)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if ls := s.PulumiStackLs(ctx); strings.Contains(ls, `"`+id+`"`) {
		t.Errorf("pulumi stack ls still shows %s:\n%s", id, ls)
	}
	_, running := s.Running()
	if pids := s.Processes(); running && len(pids) > 1 || !running && len(pids) > 0 {
		t.Errorf("processes of the data dir still running: %v", pids)
	}
	if _, err := os.Stat(filepath.Join(s.Data, "keys", id)); !os.IsNotExist(err) {
		t.Errorf("key dir of %s still exists (%v)", id, err)
	}
	if entries, _ := os.ReadDir(s.Workers); len(entries) > 0 {
		t.Errorf("worker dirs left: %v", entries)
	}
}

// readDir reads stored files from a file:// store's directory.
func readDir(root string) func(string) ([]byte, error) {
	return func(p string) ([]byte, error) { return os.ReadFile(filepath.Join(root, p)) }
}

// assertStoredFiles reads every manifest entry through read, checks its size and sha256,
// requires weights (a .safetensors file) among them, and returns the paths it saw.
func assertStoredFiles(t *testing.T, read func(path string) ([]byte, error), files []servicetest.ManifestFile) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	sawWeights := false
	for _, f := range files {
		raw, err := read(f.Path)
		if err != nil {
			t.Fatalf("read stored %s: %v", f.Path, err)
		}
		sum := sha256.Sum256(raw)
		if hex.EncodeToString(sum[:]) != f.SHA256 || int64(len(raw)) != f.Size {
			t.Errorf("stored %s does not match its manifest entry", f.Path)
		}
		seen[f.Path] = true
		sawWeights = sawWeights || strings.HasSuffix(f.Path, ".safetensors")
	}
	if !sawWeights {
		t.Fatalf("no weights stored: %+v", files)
	}
	return seen
}

func TestTrainEndToEnd(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	s := servicetest.New(t, bin, python)
	s.Start()
	dataset := servicetest.WritePairs(t, 48)
	var j servicetest.Job
	code := s.Request("POST", "/api/v1/training/start", startBody("e2e-ok", model, dataset, 48,
		map[string]any{"epochs": 2, "max_seq_len": 64, "batch_size": 8}), &j)
	if code != 202 {
		t.Fatalf("start: %d %+v", code, j)
	}
	j = s.WaitFor("e2e-ok", 5*time.Minute, "a terminal status", terminal)
	if j.Status != "completed" {
		t.Fatalf("job ended %s: %+v", j.Status, j.Error)
	}
	if j.Progress.Step == 0 || j.Progress.Step != j.Progress.TotalSteps || j.Machine == nil || j.Machine.InstanceID == "" {
		t.Fatalf("progress/machine not recorded: %+v %+v", j.Progress, j.Machine)
	}
	root := strings.TrimPrefix(j.WeightsURI, "file://")
	if root != filepath.Join(s.Data, "weights", "ep-e2e", "v1", "e2e-ok")+"/" {
		t.Fatalf("weights_uri = %s", j.WeightsURI)
	}
	if !assertStoredFiles(t, readDir(root), j.Manifest.Files)["manifest.json"] {
		t.Fatalf("manifest.json missing: %+v", j.Manifest.Files)
	}
	for _, k := range []string{"eval_loss_before", "eval_loss_after", "eos_rate"} {
		if _, ok := j.Manifest.Metrics[k]; !ok {
			t.Errorf("metric %s missing: %v", k, j.Manifest.Metrics)
		}
	}
	assertTornDown(t, s, "e2e-ok")
	var evs struct {
		Events []struct{ Type, Status string } `json:"events"`
	}
	s.Request("GET", "/api/v1/training/e2e-ok/events", nil, &evs)
	var statuses []string
	signalled := false
	for _, e := range evs.Events {
		if e.Type == "status" {
			statuses = append(statuses, e.Status)
		}
		// The runtime's own completion call, authenticated by the per-job token.
		signalled = signalled || e.Type == "completion_signal"
	}
	if !signalled {
		t.Errorf("no completion_signal event: the machine's call to the completed endpoint was not accepted")
	}
	want := []string{"queued", "provisioning", "uploading", "training", "downloading", "tearing_down", "completed"}
	if !slices.Equal(statuses, want) {
		t.Fatalf("status events %v, want %v", statuses, want)
	}
}

func TestCancelMidTraining(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	s := servicetest.New(t, bin, python)
	s.Start()
	dataset := servicetest.WritePairs(t, 400)
	if code := s.Request("POST", "/api/v1/training/start", startBody("e2e-cancel", model, dataset, 400,
		map[string]any{"epochs": 100, "max_seq_len": 64, "batch_size": 4}), nil); code != 202 {
		t.Fatalf("start: %d", code)
	}
	s.WaitFor("e2e-cancel", 5*time.Minute, "training steps", func(j servicetest.Job) bool {
		return j.Status == "training" && j.Progress.Step >= 1
	})
	if code := s.Request("POST", "/api/v1/training/e2e-cancel/cancel", nil, nil); code != 202 {
		t.Fatalf("cancel: %d", code)
	}
	j := s.WaitFor("e2e-cancel", 3*time.Minute, "cancelled", func(j servicetest.Job) bool { return j.Status == "cancelled" || j.Status == "failed" })
	if j.Status != "cancelled" {
		t.Fatalf("ended %s: %+v", j.Status, j.Error)
	}
	assertTornDown(t, s, "e2e-cancel")
}

func TestServiceKilledMidTrainingResumes(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	s := servicetest.New(t, bin, python)
	s.Start()
	dataset := servicetest.WritePairs(t, 200)
	if code := s.Request("POST", "/api/v1/training/start", startBody("e2e-restart", model, dataset, 200,
		map[string]any{"epochs": 4, "max_seq_len": 64, "batch_size": 4}), nil); code != 202 {
		t.Fatalf("start: %d", code)
	}
	before := s.WaitFor("e2e-restart", 5*time.Minute, "training steps", func(j servicetest.Job) bool {
		return j.Status == "training" && j.Progress.Step >= 1
	})
	s.Kill()
	// The machine and its detached run outlive the service.
	if pids := s.Processes(); len(pids) == 0 {
		t.Fatal("the job's machine died with the service")
	}
	s.Start()
	j := s.WaitFor("e2e-restart", 5*time.Minute, "a terminal status", terminal)
	if j.Status != "completed" || j.Progress.Step < before.Progress.Step {
		t.Fatalf("after restart: %s %+v (progress %+v)", j.Status, j.Error, j.Progress)
	}
	if j.Machine.InstanceID != before.Machine.InstanceID {
		t.Fatalf("a new machine was made: %s vs %s", j.Machine.InstanceID, before.Machine.InstanceID)
	}
	assertTornDown(t, s, "e2e-restart")
}
