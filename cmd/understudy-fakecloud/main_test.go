package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/testenv"

	"github.com/understudy-ai/training-service/provider/sshd"
)

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestRunRefusesBadCommandLines(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, args := range map[string][]string{
		"unknown fault":          {"--provider", "runpod", "--dir", dir, "--fault", "explode"},
		"no provider":            {"--dir", dir},
		"unknown provider":       {"--provider", "aws", "--dir", dir},
		"no dir":                 {"--provider", "lambda"},
		"ssh port on runpod":     {"--provider", "runpod", "--dir", dir, "--ssh-port", "2222"},
		"no-user-data on runpod": {"--provider", "runpod", "--dir", dir, "--fault", "no-user-data"},
		"public listen":          {"--provider", "runpod", "--dir", dir, "--listen", "0.0.0.0:0"},
		"unknown flag":           {"--provider", "runpod", "--dir", dir, "--zone", "x"},
		"stray argument":         {"--provider", "runpod", "--dir", dir, "extra"},
	} {
		err := run(t.Context(), args, io.Discard, io.Discard)
		var usage usageError
		if !errors.As(err, &usage) {
			t.Errorf("%s: err = %v, want a usage error", name, err)
		}
	}
}

// safeDir is a directory that sshd's StrictModes accepts (not under /tmp).
func safeDir(t *testing.T) string {
	return testenv.SSHDDir(t, "understudy-fakecloud-cmd-test-")
}

// TestRunServesThenTerminatesMachines starts the command, creates a pod through the URL it
// announces, and checks that cancelling (as SIGTERM does) ends the pod's sshd and exits 0.
func TestRunServesThenTerminatesMachines(t *testing.T) {
	if _, err := os.Stat(sshd.DefaultPath); err != nil || os.Geteuid() != 0 {
		testenv.Missing(t, "needs root and an OpenSSH server")
	}
	dir := safeDir(t)
	t.Setenv("FAKECLOUD_API_KEY", "env-key")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stdout, announce := io.Pipe()
	done := make(chan error, 1)
	t.Cleanup(func() {
		cancel()
		<-done
	})
	go func() {
		done <- run(ctx, []string{"--provider", "runpod", "--dir", dir, "--boot-delay", "100ms"}, announce, tWriter{t})
		announce.Close()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("read announcement: %v", err)
	}
	var a announcement
	if err := json.Unmarshal([]byte(line), &a); err != nil || a.Provider != "runpod" || a.Dir != dir || a.PID != os.Getpid() || !strings.HasPrefix(a.URL, "http://127.0.0.1:") {
		t.Fatalf("announcement %q: %+v %v", line, a, err)
	}
	go io.Copy(io.Discard, stdout)

	body := `{"name":"cmd","image":"img","gpu":{"id":"NVIDIA GeForce RTX 4090"},"ports":["22/tcp"]}`
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, a.URL+"/v2/pods", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer env-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create pod with the key from FAKECLOUD_API_KEY: %d", resp.StatusCode)
	}
	var pid int
	for deadline := time.Now().Add(15 * time.Second); pid == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no sshd started")
		}
		matches, _ := filepath.Glob(filepath.Join(dir, "machines", "*"))
		if len(matches) == 1 {
			pid, _ = sshd.PID(sshd.FilesOf(matches[0]), 0)
		}
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run after cancel: %v", err)
	}
	done <- nil // for the cleanup
	if !sshd.ProcessGone(pid) {
		t.Errorf("sshd %d still runs", pid)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "machines")); len(entries) != 0 {
		t.Errorf("machine dirs left: %v", entries)
	}
}
