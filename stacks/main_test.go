package stacks_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/testenv"

	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/programs/programtest"
	"github.com/understudy-ai/training-service/stacks"
)

// Set by TestMain.
var (
	repoRoot  string // the module root
	pulumiBin string // the pinned CLI, <root>/bin/pulumi
	pluginBin string // pulumi-resource-understudy built for this run
	skipWhy   string // why the engine tests cannot run here
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	root, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	repoRoot = root
	pulumiBin = filepath.Join(root, "bin", "pulumi")
	if _, err := os.Stat(pulumiBin); err != nil {
		skipWhy = "the pinned Pulumi CLI is not built at bin/pulumi (run `make` first): " + err.Error()
		return m.Run()
	}
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		skipWhy = "the local program needs OpenSSH's sshd at /usr/sbin/sshd: " + err.Error()
		return m.Run()
	}
	if os.Geteuid() != 0 {
		skipWhy = "the local worker's sshd logs in as the current user, which needs root here"
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "understudy-plugin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	pluginBin = filepath.Join(dir, "pulumi-resource-understudy")
	build := exec.Command("go", "build", "-o", pluginBin, "./cmd/pulumi-resource-understudy")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build the provider plugin: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

func requireEngine(t *testing.T) {
	t.Helper()
	if skipWhy != "" {
		testenv.Missing(t, skipWhy)
	}
}

// testLogger writes to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tLogWriter struct{ t *testing.T }

func (w tLogWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newManager opens a Manager on a fresh data directory.
func newManager(t *testing.T, dataDir string) *stacks.Manager {
	t.Helper()
	m, err := stacks.Open(t.Context(), stacks.Config{
		DataDir:   dataDir,
		PulumiBin: pulumiBin,
		PluginBin: pluginBin,
		Logger:    testLogger(t),
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return m
}

// workerBaseDir returns a fresh directory for local workers that sshd's StrictModes
// accepts (the usual temp dir sits under the world-writable /tmp), and registers, before
// anything can start there, the ending of any sshd left under it, by pid.
func workerBaseDir(t *testing.T) string {
	t.Helper()
	parent, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(parent, "understudy-stacks-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, pid := range sshdsUnder(dir) {
			t.Errorf("sshd %d under %s outlived the test; killing it", pid, dir)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		os.RemoveAll(dir)
	})
	return dir
}

// sshdsUnder lists running processes whose command line names a file under dir: the
// sshds of workers made there.
func sshdsUnder(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), dir+"/") {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
			continue // a zombie waiting for a parent that does not reap
		}
		pids = append(pids, pid)
	}
	return pids
}

func localSpec(t *testing.T, trainID string, k programtest.Keys, baseDir string) programs.Spec {
	return programs.Spec{
		TrainID:        trainID,
		EndpointID:     "ep-7",
		Version:        "v2",
		Provider:       "local",
		AuthorizedKey:  k.AuthorizedKey,
		HostPrivateKey: k.HostPrivateKey,
		Tags:           map[string]string{"team": "research"},
		Local:          programs.LocalConfig{BaseDir: baseDir},
	}
}

// destroyOnCleanup registers the destruction of a job's stack, whatever the test did.
func destroyOnCleanup(t *testing.T, m *stacks.Manager, trainID string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := m.Destroy(ctx, trainID, nil); err != nil {
			t.Errorf("cleanup: destroy %s: %v", trainID, err)
		}
	})
}

func emptyDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("%s left behind in %s", e.Name(), dir)
	}
}
