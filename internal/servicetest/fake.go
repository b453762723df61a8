package servicetest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Fake is one understudy-fakecloud process: a fake RunPod or Lambda Cloud API whose
// machines are real sshd's under the service's data dir.
type Fake struct {
	Provider string
	URL      string // the API base the service is configured with
	Dir      string
	Key      string
	SSHPort  int // Lambda: the port every instance's sshd listens on

	t    testing.TB
	root string // server root, for /_fake
	cmd  *exec.Cmd
	log  *bytes.Buffer
}

// StartFake runs the fake for provider ("runpod" or "lambda") with the extra arguments
// (such as "--fault", "no-capacity"), keeping its files under s's data dir so that the
// service's cleanup also ends anything it left. The fake is stopped when the test ends.
func StartFake(t testing.TB, s *Service, provider string, args ...string) *Fake {
	t.Helper()
	f := &Fake{Provider: provider, Dir: filepath.Join(s.Data, "fakecloud-"+provider), Key: "fake-key-" + strconv.Itoa(os.Getpid()),
		t: t, log: &bytes.Buffer{}}
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	_, p, _ := strings.Cut(port, ":")
	f.SSHPort, _ = strconv.Atoi(p)
	all := []string{"--provider", provider, "--dir", f.Dir, "--listen", "127.0.0.1:0", "--boot-delay", "1s"}
	if provider == "lambda" {
		all = append(all, "--ssh-port", p)
	}
	all = append(all, args...)
	cmd := exec.Command(filepath.Join(s.bin, "understudy-fakecloud"), all...)
	cmd.Env = append(os.Environ(), "FAKECLOUD_API_KEY="+f.Key)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = f.log
	t.Cleanup(f.Stop)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.cmd = cmd
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		for sc.Scan() {
		}
	}()
	select {
	case line, ok := <-lines:
		var hello struct {
			URL string `json:"url"`
		}
		if !ok || json.Unmarshal([]byte(line), &hello) != nil || hello.URL == "" {
			t.Fatalf("fake %s did not announce its URL (%q):\n%s", provider, line, f.log)
		}
		f.URL = hello.URL
		f.root = strings.TrimSuffix(hello.URL, "/api/v1")
	case <-time.After(30 * time.Second):
		t.Fatalf("fake %s did not start:\n%s", provider, f.log)
	}
	return f
}

// Env is the service's environment for this fake: the provider's API URL and key, and
// where jobs go on its machines.
func (f *Fake) Env() []string {
	work := filepath.Join(f.Dir, "work")
	switch f.Provider {
	case "runpod":
		return []string{"RUNPOD_API_URL=" + f.URL, "RUNPOD_API_KEY=" + f.Key, "RUNPOD_WORK_DIR=" + work}
	case "lambda":
		u, err := user.Current()
		if err != nil {
			f.t.Fatal(err)
		}
		return []string{"LAMBDA_API_URL=" + f.URL, "LAMBDA_API_KEY=" + f.Key, "LAMBDA_WORK_DIR=" + work,
			"LAMBDA_SSH_USER=" + u.Username, "LAMBDA_SSH_PORT=" + strconv.Itoa(f.SSHPort),
			"UNDERSTUDY_RATE_DIR=" + filepath.Join(f.Dir, "rate")}
	}
	f.t.Fatalf("no environment for provider %s", f.Provider)
	return nil
}

// FakeMachine is one machine the fake still holds.
type FakeMachine struct {
	ID            string `json:"id"`
	Name          string `json:"name"`
	Status        string `json:"status"`
	Interruptible bool   `json:"interruptible"`
	HostKeyInject bool   `json:"host_key_injected"`
	StoppedReason string `json:"stopped_reason"`
}

// FakeInventory is what the fake holds.
type FakeInventory struct {
	Machines []FakeMachine `json:"machines"`
	SSHKeys  []struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	} `json:"ssh_keys"`
}

// Inventory returns what the fake holds now.
func (f *Fake) Inventory() FakeInventory {
	f.t.Helper()
	var inv FakeInventory
	f.get("/_fake/machines", &inv)
	return inv
}

// Stats returns the fake's request counts.
func (f *Fake) Stats() map[string]any {
	f.t.Helper()
	var st map[string]any
	f.get("/_fake/stats", &st)
	return st
}

func (f *Fake) get(path string, out any) {
	f.t.Helper()
	resp, err := http.Get(f.root + path)
	if err != nil {
		f.t.Fatalf("fake %s: %v", path, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		f.t.Fatalf("fake %s: %v", path, err)
	}
}

// AssertEmpty fails the test when the fake still holds a machine or a registered key.
func (f *Fake) AssertEmpty() {
	f.t.Helper()
	inv := f.Inventory()
	if len(inv.Machines) > 0 || len(inv.SSHKeys) > 0 {
		f.t.Errorf("the fake %s still holds machines %+v and keys %+v", f.Provider, inv.Machines, inv.SSHKeys)
	}
}

// WaitInventory polls until cond holds for what the fake holds, or fails the test.
func (f *Fake) WaitInventory(timeout time.Duration, what string, cond func(FakeInventory) bool) FakeInventory {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		inv := f.Inventory()
		if cond(inv) {
			return inv
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("fake %s: waited %s for %s; it holds %+v", f.Provider, timeout, what, inv)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Pid is the fake's process id.
func (f *Fake) Pid() int {
	if f.cmd == nil {
		return 0
	}
	return f.cmd.Process.Pid
}

// Stop ends the fake (which terminates its machines).
func (f *Fake) Stop() {
	if f.cmd == nil {
		return
	}
	terminate(f.cmd, 30*time.Second)
	if f.t.Failed() {
		f.t.Logf("fake %s log:\n%s", f.Provider, f.log)
	}
	f.cmd = nil
}

// freePort is a loopback address whose port was free a moment ago.
func freePort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
