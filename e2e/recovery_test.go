package e2e

import (
	"io/fs"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/servicetest"
)

// Recovery: a machine taken away mid-training is replaced by a new one, which resumes from
// the last checkpoint the service copied off the old one, and the job completes.

// recoveryHP trains long enough (on the tiny model) for a machine to be taken away
// mid-training, and short enough for its replacement to finish.
var recoveryHP = map[string]any{"epochs": 100, "max_seq_len": 32, "batch_size": 2}

// recoveryArgs make the runtime checkpoint every two seconds, each copied off at once.
var recoveryArgs = []string{"--checkpoint-every", "2s", "--max-attempts", "3"}

// assertResumed checks that j completed on a second machine that continued from a
// checkpoint of the first.
func assertResumed(t *testing.T, j servicetest.Job, events string) {
	t.Helper()
	if j.Status != "completed" {
		t.Fatalf("job ended %s with %+v; events:\n%s", j.Status, j.Error, events)
	}
	if len(j.Attempts) != 2 {
		t.Fatalf("attempts %+v, want 2; events:\n%s", j.Attempts, events)
	}
	first, second := j.Attempts[0], j.Attempts[1]
	if first.Reason != "preempted" && first.Reason != "machine_lost" || first.InstanceID == second.InstanceID {
		t.Errorf("first attempt %+v, want one taken away on another machine than %s", first, second.InstanceID)
	}
	if second.ResumedFromStep < 1 || second.ResumedFromStep > first.Step || second.Reason != "completed" {
		t.Errorf("second attempt %+v, want it resumed from a checkpoint of the first (which reached step %d); events:\n%s", second, first.Step, events)
	}
	if j.Progress.TotalSteps == 0 || j.Progress.Step != j.Progress.TotalSteps {
		t.Errorf("progress %+v, want every step done", j.Progress)
	}
	if !strings.Contains(events, "checkpoint_restored") {
		t.Errorf("no checkpoint_restored event:\n%s", events)
	}
}

// A RunPod spot pod preempted mid-training: the job completes on a second pod.
func TestRecoveryAfterSpotPreemption(t *testing.T) {
	t.Parallel()
	e := newCloudEnv(t, "runpod", recoveryArgs, "--fault", "preempt-after=15s", "--fault", "preempt-once")
	id := "recover-spot"
	e.start(id, recoveryHP, map[string]any{"spot": true})
	j := e.s.WaitFor(id, 8*time.Minute, "a terminal status", terminal)
	assertResumed(t, j, e.events(id))
	if j.Attempts[0].Reason != "preempted" {
		t.Errorf("first attempt ended %q, want preempted", j.Attempts[0].Reason)
	}
	if creates, _ := e.fake.Stats()["creates"].(float64); creates != 2 {
		t.Errorf("the fake made %v machines, want 2", creates)
	}
	e.assertTornDown(id)
}

// On the local provider, the worker killed mid-training (its sshd and the runtime, by pid):
// the job completes on a new worker.
func TestRecoveryAfterLocalWorkerKilled(t *testing.T) {
	t.Parallel()
	bin, python, model := servicetest.Prerequisites(t)
	s := servicetest.New(t, bin, python)
	s.Args = append(s.Args, recoveryArgs...)
	s.Start()
	e := &cloudEnv{t: t, s: s}
	id := "recover-local"
	if code := s.Request("POST", "/api/v1/training/start", startBody(id, model, servicetest.WritePairs(t, 24), 24, recoveryHP), nil); code != 202 {
		t.Fatalf("start: %d", code)
	}
	s.WaitFor(id, 5*time.Minute, "a checkpoint copied off the worker", func(j servicetest.Job) bool {
		return j.Status == "training" && strings.Contains(e.events(id), "checkpoint_copied")
	})
	if files := storedCheckpointFiles(s, id); len(files) == 0 {
		t.Fatal("a checkpoint was copied off the worker, but the weights store holds none")
	}
	killed := killWorker(t, s)
	if killed == 0 {
		t.Fatal("no worker process found to kill")
	}
	j := s.WaitFor(id, 8*time.Minute, "a terminal status", terminal)
	assertResumed(t, j, e.events(id))
	assertTornDown(t, s, id)
	assertNoStoredCheckpoints(t, s, id)
}

// storedCheckpointFiles lists the files of a job's checkpoints in the weights store (the
// service's file store).
func storedCheckpointFiles(s *servicetest.Service, id string) []string {
	dir := filepath.Join(s.Data, "weights", "ep-e2e", "v1", id, "checkpoint")
	var files []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, strings.TrimPrefix(p, dir+"/"))
		}
		return nil
	})
	return files
}

// assertNoStoredCheckpoints checks that the checkpoints copied off a job's machines are gone
// from the weights store once the job ended: superseded ones as newer ones were stored, the
// last one when the job ended.
func assertNoStoredCheckpoints(t *testing.T, s *servicetest.Service, id string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := storedCheckpointFiles(s, id)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored checkpoint files left after the job ended: %v", left)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// killWorker SIGKILLs every process of the service's local workers (workerProcesses, their
// sshd's included), and returns how many.
func killWorker(t *testing.T, s *servicetest.Service) int {
	t.Helper()
	n := 0
	for pid := range workerProcesses(s, true) {
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			n++
		}
	}
	t.Logf("killed %d worker processes", n)
	return n
}
