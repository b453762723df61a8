package emulators

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/testenv"
)

// EnvDir names the environment variable that holds the directory scripts/emulators.sh
// prints: the emulators' binaries are in its bin/.
const EnvDir = "UNDERSTUDY_EMULATORS"

// startTimeout bounds how long an emulator may take to answer; moto and Azurite start an
// interpreter, which takes seconds on a loaded two-core machine.
const startTimeout = 90 * time.Second

// binary returns the path of an emulator's binary, or ends t through testenv.Missing.
func binary(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv(EnvDir)
	if dir == "" {
		testenv.Missing(t, fmt.Sprintf("$%s is not set: run scripts/emulators.sh (make emulators) and set it to the directory it prints", EnvDir))
	}
	p := filepath.Join(dir, "bin", name)
	if _, err := os.Stat(p); err != nil {
		testenv.Missing(t, fmt.Sprintf("emulator %s not installed in $%s (run scripts/emulators.sh): %v", name, EnvDir, err))
	}
	return p
}

// process is one running emulator.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited and been reaped
}

// launch starts an emulator on a free port of 127.0.0.1 and waits until probe (an HTTP
// GET of base+path) gets any HTTP answer. args builds the command line for a port and a
// data directory. A process that exits before it answers (another process took the port
// meanwhile) is started again on another port, twice at most. The process is stopped when
// t ends.
func launch(t testing.TB, name, bin string, env []string, args func(port int, dir string) []string, path string) (port int) {
	t.Helper()
	var lastErr error
	for attempt := range 3 {
		dir := t.TempDir()
		var err error
		if port, err = freePort(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		p := &process{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
		logFile, err := os.Create(p.log)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		p.cmd = exec.Command(bin, args(port, dir)...)
		p.cmd.Dir = dir
		p.cmd.Env = append(os.Environ(), env...)
		p.cmd.Stdout = logFile
		p.cmd.Stderr = logFile
		// Its own process group, so that the stop reaches whatever it starts.
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		t.Cleanup(func() { p.stop(t) })
		err = p.cmd.Start()
		logFile.Close()
		if err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		go func() { _ = p.cmd.Wait(); close(p.done) }()

		base := fmt.Sprintf("http://127.0.0.1:%d", port)
		if lastErr = p.waitReady(base + path); lastErr == nil {
			return port
		}
		select {
		case <-p.done:
			// Exited early; try another port.
			t.Logf("%s (attempt %d) exited before it answered: %v\n%s", name, attempt+1, lastErr, tail(p.log))
			continue
		default:
		}
		t.Fatalf("%s did not answer on %s: %v\n%s", name, base, lastErr, tail(p.log))
	}
	t.Fatalf("%s did not start: %v", name, lastErr)
	return 0
}

// waitReady polls url until the server answers or the process exits.
func (p *process) waitReady(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited: %v", p.cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("no answer within %s: %w", startTimeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop ends the emulator and its process group: SIGTERM, then SIGKILL after a grace
// period. The group is signalled by the id of its leader, our child, which cannot have
// been reused: the id of a group's leader is not handed out while the group lives.
func (p *process) stop(t testing.TB) {
	if p.cmd.Process == nil {
		return
	}
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, pid)
		}
	}
	// Whatever else is left in the group.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	if t.Failed() {
		t.Logf("%s log:\n%s", p.name, tail(p.log))
	}
}

// tail returns the end of a log file, for failure messages.
func tail(name string) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	const max = 4 << 10
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(bytes.TrimSpace(b))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// uniqueName returns a bucket name no other test uses: lowercase letters, digits and
// hyphens, which S3, GCS and Azure all accept.
func uniqueName() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "understudy-" + hex.EncodeToString(b)
}

// do sends req and fails unless the answer has one of the wanted statuses.
func do(req *http.Request, want ...int) error {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	for _, w := range want {
		if resp.StatusCode == w {
			return nil
		}
	}
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	return errors.New(resp.Status + ": " + string(bytes.TrimSpace(body.Bytes())))
}

// setenv sets every NAME=value of env for the rest of t.
func setenv(t testing.TB, env []string) {
	t.Helper()
	for _, kv := range env {
		k, v, _ := bytes.Cut([]byte(kv), []byte("="))
		t.Setenv(string(k), string(v))
	}
}
