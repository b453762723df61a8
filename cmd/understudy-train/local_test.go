package main

import (
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/understudy-ai/training-service/internal/sysuser"
	"github.com/understudy-ai/training-service/internal/testenv"
)

// As root, local jobs run as their own unprivileged user, outside the data dir, and a
// Python that user cannot run makes local "not configured", naming the fix. Never as root.
func TestLocalJobsDropRoot(t *testing.T) {
	testenv.RequireRoot(t, "running local jobs as another user")
	log := slog.New(slog.DiscardHandler)
	data := testenv.SSHDDir(t, "local-")

	if _, err := configureLocal(t.Context(), Config{LocalUser: "root"}, data, log); err == nil || !strings.Contains(err.Error(), "never run as root") {
		t.Errorf("--local-user root: %v, want a refusal", err)
	}

	setup, err := configureLocal(t.Context(), Config{}, data, log)
	if err != nil {
		t.Fatal(err)
	}
	defaultDir := setup.Config.BaseDir
	t.Cleanup(func() { os.RemoveAll(defaultDir) })
	if setup.Config.User != sysuser.DefaultWorker {
		t.Errorf("user = %q, want %s", setup.Config.User, sysuser.DefaultWorker)
	}
	if u, err := user.Lookup(sysuser.DefaultWorker); err != nil || u.Uid == "0" {
		t.Errorf("the jobs' user: %+v %v", u, err)
	}
	if dir := filepath.Dir(setup.Config.BaseDir); dir != defaultWorkersParent || strings.HasPrefix(setup.Config.BaseDir, data) {
		t.Errorf("workers dir = %s, want one under %s, outside the data dir", setup.Config.BaseDir, defaultWorkersParent)
	}
	if st, err := os.Stat(setup.Config.BaseDir); err != nil || st.Mode().Perm() != 0o711 {
		t.Errorf("workers dir: %v %v, want mode 0711", st.Mode(), err)
	}
	if setup.NotReady != "" {
		t.Errorf("not ready without a local Python: %s", setup.NotReady)
	}
	// Without a local Python the jobs bootstrap one, into a cache their user owns and keeps.
	worker, _ := user.Lookup(sysuser.DefaultWorker)
	if want := filepath.Join(setup.Config.BaseDir, "runtime-cache"); setup.RuntimeCache != want {
		t.Errorf("runtime cache = %q, want %q", setup.RuntimeCache, want)
	} else if st, err := os.Stat(want); err != nil || st.Mode().Perm() != 0o700 || !st.IsDir() ||
		worker == nil || strconv.Itoa(int(st.Sys().(*syscall.Stat_t).Uid)) != worker.Uid {
		t.Errorf("runtime cache: %v %v, want a 0700 directory of %s", st, err, sysuser.DefaultWorker)
	}

	// A Python under a directory closed to the jobs' user (as root's home is).
	closed := testenv.SSHDDir(t, "python-")
	py := filepath.Join(closed, "python")
	if err := os.WriteFile(py, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := configureLocal(t.Context(), Config{LocalWorkersDir: filepath.Join(closed, "w")}, data, log); err == nil || !strings.Contains(err.Error(), closed) {
		t.Errorf("workers dir the jobs' user cannot reach: %v, want a refusal naming %s", err, closed)
	}
	if err := os.MkdirAll("/var/lib/understudy-test", 0o755); err != nil {
		t.Fatal(err)
	}
	explicit, err := os.MkdirTemp("/var/lib/understudy-test", "workers-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(explicit) })
	setup, err = configureLocal(t.Context(), Config{LocalPython: py, LocalWorkersDir: explicit}, data, log)
	if err != nil {
		t.Fatal(err)
	}
	if setup.RuntimeCache != "" {
		t.Errorf("runtime cache %q made, though a local Python was given", setup.RuntimeCache)
	}
	if setup.Config.BaseDir != explicit {
		t.Errorf("workers dir = %s, want %s", setup.Config.BaseDir, explicit)
	}
	if !strings.Contains(setup.NotReady, sysuser.DefaultWorker) || !strings.Contains(setup.NotReady, py) || !strings.Contains(setup.NotReady, "/var/cache/understudy") {
		t.Errorf("not ready = %q, want the user, the interpreter and the fix named", setup.NotReady)
	}
	// The same interpreter where the user can run it is fine.
	open := filepath.Join(explicit, "python")
	if err := os.WriteFile(open, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if setup, err = configureLocal(t.Context(), Config{LocalPython: open, LocalWorkersDir: explicit}, data, log); err != nil || setup.NotReady != "" {
		t.Errorf("runnable python: %v, not ready %q", err, setup.NotReady)
	}
}
