package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/servicetest"
	"github.com/understudy-ai/training-service/internal/sysuser"
	"github.com/understudy-ai/training-service/internal/testenv"
)

// workerProcesses returns, by pid, the owners of the processes that run under the service's
// local workers: those of their SSH sessions (which carry UNDERSTUDY_WORKER=<worker dir>)
// and, with servers, the sshd's themselves (whose command lines name their config under the
// workers dir). Neither this test nor the service is among them.
func workerProcesses(s *servicetest.Service, servers bool) map[int]uint32 {
	marker := []byte("UNDERSTUDY_WORKER=" + s.Workers + "/")
	workers := []byte(s.Workers + "/")
	own, _ := s.Running()
	out := map[int]uint32{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || pid == own {
			continue
		}
		environ, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if !bytes.Contains(environ, marker) && !(servers && bytes.Contains(cmdline, workers)) {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join("/proc", e.Name()), &st); err == nil {
			out[pid] = st.Uid
		}
	}
	return out
}

// A service run as root runs local jobs as an unprivileged user of their own, never as
// root: every process of a training job belongs to that user, who cannot read the data dir.
func TestLocalJobsRunAsAnUnprivilegedUser(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	testenv.RequireRoot(t, "checking that a root service drops local jobs to another user")
	s := servicetest.New(t, bin, python)
	s.Start()
	worker, err := user.Lookup(sysuser.DefaultWorker)
	if err != nil {
		t.Fatalf("the service did not make its jobs' user: %v", err)
	}
	if worker.Uid == "0" {
		t.Fatalf("%s is root", sysuser.DefaultWorker)
	}
	dataset := servicetest.WritePairs(t, 400)
	const id = "e2e-unprivileged"
	if code := s.Request("POST", "/api/v1/training/start", startBody(id, model, dataset, 400,
		map[string]any{"epochs": 100, "max_seq_len": 64, "batch_size": 4}), nil); code != 202 {
		t.Fatalf("start: %d", code)
	}
	s.WaitFor(id, 5*time.Minute, "training steps", func(j servicetest.Job) bool {
		return j.Status == "training" && j.Progress.Step >= 1
	})
	uids := workerProcesses(s, false)
	if len(uids) == 0 {
		t.Fatal("no process of the job found while it trains")
	}
	for pid, uid := range uids {
		if strconv.Itoa(int(uid)) != worker.Uid {
			cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
			t.Errorf("job process %d (%s) runs as uid %d, want %s (%s)", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}), uid, worker.Uid, worker.Username)
		}
	}
	// What the job's user can reach: not the data dir (jobs.db, keys, the passphrase).
	wuid, _ := strconv.Atoi(worker.Uid)
	wgid, _ := strconv.Atoi(worker.Gid)
	for _, name := range []string{"jobs.db", "pulumi-passphrase", filepath.Join("keys", id)} {
		cmd := exec.Command("cat", filepath.Join(s.Data, name))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(wuid), Gid: uint32(wgid)}}
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "Permission denied") {
			t.Errorf("the job's user reads %s: %v %s", name, err, out)
		}
	}
	if code := s.Request("POST", "/api/v1/training/"+id+"/cancel", nil, nil); code != 202 {
		t.Fatalf("cancel: %d", code)
	}
	j := s.WaitFor(id, 3*time.Minute, "cancelled", func(j servicetest.Job) bool { return j.Status == "cancelled" || j.Status == "failed" })
	if j.Status != "cancelled" {
		t.Fatalf("ended %s: %+v", j.Status, j.Error)
	}
	assertTornDown(t, s, id)
}

// The service runs, and trains a job end to end, as an unprivileged user: sshd needs no
// root, and the job runs as that same user (docs/security.md says what that allows).
func TestServiceRunsAsAnUnprivilegedUser(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	var s *servicetest.Service
	if os.Geteuid() == 0 {
		const name = "understudy-e2e"
		_, existed := user.Lookup(name)
		u, err := sysuser.Ensure(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		if existed != nil {
			t.Cleanup(func() {
				if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
					t.Errorf("userdel %s: %v %s", name, err, out)
				}
			})
		}
		s = servicetest.NewAs(t, bin, python, u)
	} else {
		s = servicetest.New(t, bin, python)
	}
	s.Start()
	pid, _ := s.Running()
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join("/proc", strconv.Itoa(pid)), &st); err != nil || st.Uid == 0 {
		t.Fatalf("the service runs as uid %d (%v); want an unprivileged user", st.Uid, err)
	}
	pairs := make([]map[string]string, 48)
	for i := range pairs {
		pairs[i] = map[string]string{"prompt": "What is " + strconv.Itoa(i) + " plus one?", "response": strconv.Itoa(i+1) + "."}
	}
	const id = "e2e-nonroot"
	body := map[string]any{"train_id": id, "endpoint_id": "ep-e2e", "version": 1, "training_pairs_count": len(pairs),
		"slm_type": model, "source_llm": "gpt-3.5-turbo", "provider": "local", "training_pairs": pairs,
		"hyperparameters": map[string]any{"epochs": 1, "max_seq_len": 64, "batch_size": 8}}
	if code := s.Request("POST", "/api/v1/training/start", body, nil); code != 202 {
		t.Fatalf("start: %d", code)
	}
	j := s.WaitFor(id, 5*time.Minute, "a terminal status", terminal)
	if j.Status != "completed" {
		t.Fatalf("job ended %s: %+v", j.Status, j.Error)
	}
	assertStoredFiles(t, readDir(strings.TrimPrefix(j.WeightsURI, "file://")), j.Manifest.Files)
	if uids := workerProcesses(s, false); len(uids) > 0 {
		t.Errorf("job processes left: %v", uids)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if ls := s.PulumiStackLs(ctx); strings.Contains(ls, `"`+id+`"`) {
		t.Errorf("pulumi stack ls still shows %s:\n%s", id, ls)
	}
	if entries, _ := os.ReadDir(s.Workers); len(entries) > 0 {
		t.Errorf("worker dirs left: %v", entries)
	}
}
