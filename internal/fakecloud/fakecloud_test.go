package fakecloud

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/testenv"

	"golang.org/x/crypto/ssh"
)

const testKey = "test-key"

// testBootDelay keeps machines quick to boot in tests.
const testBootDelay = 200 * time.Millisecond

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func requireSSHD(t *testing.T) {
	testenv.RequireSSHD(t)
}

// safeDir returns a fresh directory that sshd's StrictModes accepts: the usual temp dir sits
// under the world-writable /tmp, so it is made under the user's cache directory instead.
func safeDir(t *testing.T) string {
	return testenv.SSHDDir(t, "understudy-fakecloud-test-")
}

// fake is a Server under test, served over real HTTP.
type fake struct {
	t    *testing.T
	srv  *Server
	root string // server root, e.g. http://127.0.0.1:1234
	base string // what the provider's client is configured with
}

// startFake starts a fake cloud whose every machine is torn down when the test ends, and
// checks then that none was left behind.
func startFake(t *testing.T, cfg Config) *fake {
	t.Helper()
	requireSSHD(t)
	if cfg.Dir == "" {
		cfg.Dir = safeDir(t)
	}
	if cfg.APIKey == "" {
		cfg.APIKey = testKey
	}
	if cfg.BootDelay == 0 {
		cfg.BootDelay = testBootDelay
	}
	cfg.Logger = testLogger(t)
	var srv *Server
	t.Cleanup(func() {
		if srv == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		entries, _ := os.ReadDir(srv.machines)
		for _, e := range entries {
			t.Errorf("machine dir %s left behind", e.Name())
		}
	})
	var err error
	if srv, err = New(cfg); err != nil {
		t.Fatalf("New: %v", err)
	}
	ts := httptest.NewUnstartedServer(srv.Handler())
	t.Cleanup(ts.Close)
	ts.Start()
	return &fake{t: t, srv: srv, root: ts.URL, base: srv.BaseURL(ts.URL)}
}

// reply is an HTTP answer.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) json(t *testing.T) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
	return v
}

// call sends a request with the test key to the provider's API under f.base.
func (f *fake) call(method, path string, body any) reply {
	f.t.Helper()
	return f.callWith(method, f.base+path, body, func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+testKey) })
}

func (f *fake) callWith(method, url string, body any, auth func(*http.Request)) reply {
	f.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			f.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(f.t.Context(), method, url, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth != nil {
		auth(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: data}
}

// fakeMachines reads GET /_fake/machines.
func (f *fake) fakeMachines() (machines []fakeMachine, keys []fakeKey) {
	f.t.Helper()
	r := f.callWith(http.MethodGet, f.root+"/_fake/machines", nil, nil)
	var out struct {
		Machines []fakeMachine `json:"machines"`
		SSHKeys  []fakeKey     `json:"ssh_keys"`
	}
	if r.status != http.StatusOK {
		f.t.Fatalf("GET /_fake/machines: %d %s", r.status, r.body)
	}
	if err := json.Unmarshal(r.body, &out); err != nil {
		f.t.Fatal(err)
	}
	return out.Machines, out.SSHKeys
}

func (f *fake) fakeMachine(id string) fakeMachine {
	f.t.Helper()
	ms, _ := f.fakeMachines()
	for _, m := range ms {
		if m.ID == id {
			return m
		}
	}
	f.t.Fatalf("machine %s not in /_fake/machines", id)
	return fakeMachine{}
}

func (f *fake) stats() stats {
	f.t.Helper()
	r := f.callWith(http.MethodGet, f.root+"/_fake/stats", nil, nil)
	var s stats
	if err := json.Unmarshal(r.body, &s); err != nil {
		f.t.Fatal(err)
	}
	return s
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// keyPair is an ed25519 key as a client and as the fake see it.
type keyPair struct {
	signer     ssh.Signer
	authorized string // authorized_keys line
	pem        string // OpenSSH PEM private key
}

func newKeyPair(t *testing.T) keyPair {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{
		signer:     signer,
		authorized: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " job@test",
		pem:        string(pem.EncodeToMemory(block)),
	}
}

// sshRun logs in to addr as the current user with key, pinning hostKey, and runs cmd.
func sshRun(t *testing.T, addr string, hostKey ssh.PublicKey, key ssh.Signer, cmd string) (string, error) {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("dial %s: %w", addr, err)
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, &ssh.ClientConfig{
		User: u.Username, Auth: []ssh.AuthMethod{ssh.PublicKeys(key)},
		HostKeyCallback: ssh.FixedHostKey(hostKey),
	})
	if err != nil {
		conn.Close()
		return "", fmt.Errorf("handshake %s: %w", addr, err)
	}
	client := ssh.NewClient(c, chans, reqs)
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return "", fmt.Errorf("open session: %w", err)
	}
	defer sess.Close()
	out, err := sess.CombinedOutput(cmd)
	return string(out), err
}

// tagged reports whether any process carries the machine dir's tag.
func tagged(dir string) bool {
	want := []byte(TagName + "=" + dir)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(kv, want) {
				return true
			}
		}
	}
	return false
}

// freePort returns a TCP port that is free on loopback now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// detachedSleep is a command that leaves a process running after the session ends.
const detachedSleep = "nohup setsid sleep 600 >/dev/null 2>&1 </dev/null & echo started"

// str digs a string out of decoded JSON by keys.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}
