package lifecycle

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/job"
)

// fakeWeights records what the Driver deletes from the weights store. A key in failures
// fails that many more deletes (a negative count: every one).
type fakeWeights struct {
	mu       sync.Mutex
	deleted  []string
	failures map[string]int
	tries    int
}

func (w *fakeWeights) Delete(ctx context.Context, key string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tries++
	if n := w.failures[key]; n != 0 {
		w.failures[key] = n - 1
		return errors.New("store unavailable")
	}
	w.deleted = append(w.deleted, key)
	return nil
}

func (w *fakeWeights) keys() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Sorted(slices.Values(w.deleted))
}

func listing(step string, files ...string) []byte {
	out := step + "\n"
	for _, f := range files {
		out += strings.Repeat("1", 64) + "  ./" + f + "\n"
	}
	return []byte(out)
}

// waitForgotten waits until the Driver has dropped the job's stored checkpoint, which it
// does just after the job turns terminal.
func (h *harness) waitForgotten(id string) *job.Job {
	h.t.Helper()
	return h.waitUntil(id, func(j *job.Job) bool { return j.Internal.LastCheckpoint == nil }, func(j *job.Job) string {
		return fmt.Sprintf("the stored checkpoint %+v is still recorded", j.Internal.LastCheckpoint)
	})
}

// Only the newest checkpoint copied off a machine is kept in the weights store: the one it
// supersedes is deleted as soon as it is recorded.
func TestSupersededCheckpointIsRemoved(t *testing.T) {
	w := &fakeWeights{}
	h := newHarness(t, Config{Weights: w})
	// The job waits in provisioning, until the harness stops the driver, while the test
	// copies checkpoints itself: had it run on, its end would delete the checkpoint the test
	// just recorded.
	h.prov.provisionWait = make(chan struct{})
	h.submit("prune")
	j, err := h.store.JobGet(context.Background(), "prune")
	if err != nil {
		t.Fatal(err)
	}
	m := job.Machine{WorkDir: "/w/prune"}
	j.Machine = &m
	_, key, _ := ed25519.GenerateKey(nil)
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	h.conn.runOutput = func(cmd string) []byte { return out }
	ctx := context.Background()

	out = listing("step-00000001", "trainer_state.json", "model.pt")
	if err := h.drv.pullCheckpoint(ctx, j, m, signer); err != nil {
		t.Fatal(err)
	}
	if got := w.keys(); len(got) != 0 {
		t.Fatalf("deleted %v with one checkpoint stored", got)
	}
	out = listing("step-00000002", "trainer_state.json", "model.pt")
	if err := h.drv.pullCheckpoint(ctx, j, m, signer); err != nil {
		t.Fatal(err)
	}
	want := []string{"ep/v1/prune/checkpoint/step-00000001/model.pt", "ep/v1/prune/checkpoint/step-00000001/trainer_state.json"}
	if got := w.keys(); !slices.Equal(got, want) {
		t.Fatalf("deleted %v, want %v", got, want)
	}
	cur, _ := h.store.JobGet(ctx, "prune")
	if c := cur.Internal.LastCheckpoint; c == nil || c.Name != "step-00000002" {
		t.Fatalf("last checkpoint %+v", c)
	}
	// The same checkpoint again deletes nothing.
	if err := h.drv.pullCheckpoint(ctx, j, m, signer); err != nil {
		t.Fatal(err)
	}
	if got := w.keys(); len(got) != 2 {
		t.Fatalf("deleted %v", got)
	}
}

// A job that ended has no use for the checkpoint a replacement machine would have resumed
// from: it is deleted, and forgotten.
func TestEndedJobsCheckpointIsRemoved(t *testing.T) {
	w := &fakeWeights{}
	h := newPreemptedHarness(t, Config{Weights: w})
	h.submit("ended")
	h.waitFor("ended", job.StatusCompleted)
	h.waitForgotten("ended")
	want := []string{"ep/v1/ended/checkpoint/step-00000001/adapter.pt", "ep/v1/ended/checkpoint/step-00000001/trainer_state.json"}
	if got := w.keys(); !slices.Equal(got, want) {
		t.Fatalf("deleted %v, want %v", got, want)
	}
}

// The checkpoint a stopped job was asked to keep stays in the store.
func TestKeptCheckpointIsNotRemoved(t *testing.T) {
	w := &fakeWeights{}
	h := newHarness(t, Config{MaxAttempts: 2, Weights: w})
	h.stoppable()
	h.drv.Start(context.Background())
	h.submitSpec("kept", func(s *job.Spec) { s.KeepCheckpoint = true })
	h.waitFor("kept", job.StatusTraining)
	time.Sleep(50 * time.Millisecond)
	h.drv.Cancel(context.Background(), "kept")
	h.waitFor("kept", job.StatusCancelled)
	j := h.waitForgotten("kept")
	if j.CheckpointURI == "" {
		t.Fatal("no checkpoint kept")
	}
	if got := w.keys(); len(got) != 0 {
		t.Fatalf("deleted %v, the kept checkpoint %s among them", got, j.CheckpointURI)
	}
}

// A checkpoint file the store fails to delete is tried again; one that never goes is
// reported once, as a checkpoint_not_removed event, after the last try.
func TestCheckpointRemovalIsRetried(t *testing.T) {
	cp := &job.StoredCheckpoint{Name: "step-00000002", Step: 2, Prefix: "ep/v1/retry/checkpoint/step-00000002",
		Files: []job.ManifestFile{{Path: "model.pt"}, {Path: "trainer_state.json"}}}
	model, state := cp.Prefix+"/model.pt", cp.Prefix+"/trainer_state.json"
	notRemoved := func(h *harness, id string) []job.Event {
		evs, err := h.store.EventList(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		return slices.DeleteFunc(evs, func(e job.Event) bool { return e.Type != "checkpoint_not_removed" })
	}
	for _, tc := range []struct {
		name     string
		failures int // of model.pt
		deleted  []string
		tries    int
		event    string
	}{
		{"passing failure", 2, []string{model, state}, 4, ""},
		{"lasting failure", -1, []string{state}, 4, "1 of 2 files of the stored checkpoint step-00000002 could not be removed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &fakeWeights{failures: map[string]int{model: tc.failures}}
			h := newHarness(t, Config{Weights: w, CheckpointRemoveBackoff: time.Millisecond})
			h.prov.provisionWait = make(chan struct{}) // the job waits; the test removes
			h.submit("retry")
			h.drv.removeCheckpoint(context.Background(), "retry", cp)
			if got := w.keys(); !slices.Equal(got, tc.deleted) || w.tries != tc.tries {
				t.Errorf("deleted %v in %d tries, want %v in %d", got, w.tries, tc.deleted, tc.tries)
			}
			evs := notRemoved(h, "retry")
			switch {
			case tc.event == "" && len(evs) != 0:
				t.Errorf("events %+v, want none", evs)
			case tc.event != "" && (len(evs) != 1 || !strings.Contains(evs[0].Message, tc.event)):
				t.Errorf("events %+v, want one saying %q", evs, tc.event)
			}
		})
	}
}
