package lifecycle

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/job"
)

// fakeWeights records what the Driver deletes from the weights store.
type fakeWeights struct {
	mu      sync.Mutex
	deleted []string
}

func (w *fakeWeights) Delete(ctx context.Context, key string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
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
