package provider

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/sysuser"
	"github.com/understudy-ai/training-service/internal/testenv"

	"github.com/pkg/sftp"
	"github.com/pulumi/pulumi-go-provider/infer"
	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/provider/sshd"
)

// keys holds one job's key material as the service generates it.
type keys struct {
	hostPEM    string        // OpenSSH PEM ed25519 private host key
	hostPub    ssh.PublicKey // its public half
	userSigner ssh.Signer    // the job's private key
	authorized string        // the job's public key line
}

func newKeys(t *testing.T) keys {
	t.Helper()
	_, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(hostPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	hostSigner, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		t.Fatal(err)
	}
	_, userPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	userSigner, err := ssh.NewSignerFromKey(userPriv)
	if err != nil {
		t.Fatal(err)
	}
	return keys{
		hostPEM:    string(pem.EncodeToMemory(block)),
		hostPub:    hostSigner.PublicKey(),
		userSigner: userSigner,
		authorized: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(userSigner.PublicKey()))) + " job@test",
	}
}

// safeBaseDir returns a fresh directory that sshd's StrictModes accepts. The usual temp dir
// sits under the world-writable /tmp, which StrictModes refuses, so it is made under the
// user's cache directory instead.
func safeBaseDir(t *testing.T) string {
	return testenv.SSHDDir(t, "understudy-provider-test-")
}

func requireSSHD(t *testing.T) {
	testenv.RequireSSHD(t)
}

// createWorker creates a worker and registers its deletion (and, should Delete fail, the
// killing of its sshd by pid) before returning.
func createWorker(t *testing.T, ctx context.Context, args LocalWorkerArgs) infer.CreateResponse[LocalWorkerState] {
	t.Helper()
	w := &LocalWorker{}
	var resp infer.CreateResponse[LocalWorkerState]
	t.Cleanup(func() {
		if resp.Output.Dir == "" {
			return
		}
		if _, err := w.Delete(context.WithoutCancel(ctx), infer.DeleteRequest[LocalWorkerState]{ID: resp.ID, State: resp.Output}); err != nil {
			t.Errorf("cleanup: delete worker: %v", err)
			if resp.Output.PID > 1 && sshd.CmdlineNamesConfig(resp.Output.PID, filesOf(resp.Output.Dir).Config) {
				_ = syscall.Kill(resp.Output.PID, syscall.SIGKILL)
			}
		}
	})
	var err error
	resp, err = w.Create(ctx, infer.CreateRequest[LocalWorkerArgs]{Name: "worker", Inputs: args})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return resp
}

func dialWorker(ctx context.Context, s LocalWorkerState, user ssh.Signer, hostKey ssh.PublicKey) (*ssh.Client, error) {
	addr := net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, &ssh.ClientConfig{
		User:            s.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(user)},
		HostKeyCallback: ssh.FixedHostKey(hostKey),
		Timeout:         10 * time.Second,
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	return ssh.NewClient(c, chans, reqs), nil
}

func run(t *testing.T, c *ssh.Client, cmd string) string {
	t.Helper()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	out, err := sess.CombinedOutput(cmd)
	if err != nil {
		t.Fatalf("run %q: %v: %s", cmd, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestLocalWorkerLifecycle(t *testing.T) {
	requireSSHD(t)
	t.Parallel()
	ctx := t.Context()
	k := newKeys(t)
	base := safeBaseDir(t)
	args := LocalWorkerArgs{TrainID: "tr_lifecycle-1", HostPrivateKey: k.hostPEM, AuthorizedKey: k.authorized, BaseDir: base,
		Tags: map[string]string{"train_id": "tr_lifecycle-1", "endpoint_id": "ep-1"}}

	resp := createWorker(t, ctx, args)
	s := resp.Output
	me, _, _, _, err := sshd.RunAs("")
	if err != nil {
		t.Fatal(err)
	}
	wantUser := me.Username
	if resp.ID == "" || resp.ID != s.InstanceID {
		t.Errorf("ID = %q, instanceId = %q; want equal and non-empty", resp.ID, s.InstanceID)
	}
	if s.Host != "127.0.0.1" || s.Port <= 0 || s.User != wantUser || s.PID <= 1 || !s.Running {
		t.Errorf("state host=%q port=%d user=%q pid=%d running=%v", s.Host, s.Port, s.User, s.PID, s.Running)
	}
	if filepath.Dir(s.Dir) != base || !strings.HasPrefix(filepath.Base(s.Dir), args.TrainID+"-") {
		t.Errorf("dir = %q; want a child of %q named after the job", s.Dir, base)
	}
	if s.WorkDir != filepath.Join(s.Dir, "work") {
		t.Errorf("workDir = %q", s.WorkDir)
	}
	if want := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.hostPub))); s.HostPublicKey != want {
		t.Errorf("hostPublicKey = %q, want %q", s.HostPublicKey, want)
	}
	if s.GPU == "" {
		t.Error("gpu is empty; want a GPU name or \"none\"")
	}
	if s.SSHDPath != DefaultSSHDPath {
		t.Errorf("sshdPath = %q, want the default", s.SSHDPath)
	}
	for name, want := range map[string]os.FileMode{s.Dir: 0o700, filesOf(s.Dir).HostKey: 0o600, filesOf(s.Dir).AuthorizedKeys: 0o600} {
		st, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode = %v, want %v", name, st.Mode().Perm(), want)
		}
	}
	if data, err := os.ReadFile(filesOf(s.Dir).tags); err != nil || !strings.Contains(string(data), `"endpoint_id": "ep-1"`) {
		t.Errorf("tags file = %q, %v", data, err)
	}
	if !sshd.CmdlineNamesConfig(s.PID, filesOf(s.Dir).Config) {
		t.Errorf("pid %d is not the worker's sshd", s.PID)
	}

	// A client that pins another host key is refused.
	other := newKeys(t)
	if c, err := dialWorker(ctx, s, k.userSigner, other.hostPub); err == nil {
		c.Close()
		t.Fatal("connected although the pinned host key differs")
	}
	// Another user key is refused.
	if c, err := dialWorker(ctx, s, other.userSigner, k.hostPub); err == nil {
		c.Close()
		t.Fatal("logged in with a key that is not the job's")
	}

	parsedHostPub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s.HostPublicKey))
	if err != nil {
		t.Fatal(err)
	}
	c, err := dialWorker(ctx, s, k.userSigner, parsedHostPub)
	if err != nil {
		t.Fatalf("dial worker with the pinned host key: %v", err)
	}
	defer c.Close()
	if got := run(t, c, "echo $"+WorkerEnv); got != s.Dir {
		t.Errorf("%s in a session = %q, want %q", WorkerEnv, got, s.Dir)
	}

	// SFTP works through internal-sftp, into the work dir.
	sc, err := sftp.NewClient(c)
	if err != nil {
		t.Fatalf("sftp: %v", err)
	}
	fh, err := sc.Create(filepath.Join(s.WorkDir, "hello.txt"))
	if err != nil {
		t.Fatalf("sftp create: %v", err)
	}
	if _, err := fh.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	sc.Close()
	if data, err := os.ReadFile(filepath.Join(s.WorkDir, "hello.txt")); err != nil || string(data) != "hi" {
		t.Errorf("uploaded file = %q, %v", data, err)
	}

	// A detached run, as the runner starts training: it outlives the session.
	detached, err := strconv.Atoi(run(t, c, "setsid nohup sleep 600 >/dev/null 2>&1 < /dev/null & echo $!"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !sshd.ProcessGone(detached) {
			_ = syscall.Kill(detached, syscall.SIGKILL)
		}
	})
	c.Close()
	time.Sleep(200 * time.Millisecond)
	if sshd.ProcessGone(detached) {
		t.Fatal("detached process ended with its session")
	}

	w := &LocalWorker{}
	read, err := w.Read(ctx, infer.ReadRequest[LocalWorkerArgs, LocalWorkerState]{ID: resp.ID, Inputs: args, State: s})
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if read.ID != resp.ID || !read.State.Running || read.State.PID != s.PID {
		t.Errorf("Read = id %q running %v pid %d", read.ID, read.State.Running, read.State.PID)
	}

	if _, err := w.Delete(ctx, infer.DeleteRequest[LocalWorkerState]{ID: resp.ID, State: s}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if !sshd.ProcessGone(s.PID) {
		t.Errorf("sshd %d still runs after Delete", s.PID)
	}
	if !sshd.ProcessGone(detached) {
		t.Errorf("detached session process %d still runs after Delete", detached)
	}
	if _, err := os.Stat(s.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("worker dir after Delete: %v", err)
	}
	if conn, err := net.DialTimeout("tcp", net.JoinHostPort(s.Host, strconv.Itoa(s.Port)), time.Second); err == nil {
		conn.Close()
		t.Errorf("port %d still accepts after Delete", s.Port)
	}

	read, err = w.Read(ctx, infer.ReadRequest[LocalWorkerArgs, LocalWorkerState]{ID: resp.ID, Inputs: args, State: s})
	if err != nil {
		t.Fatalf("Read after Delete: %v", err)
	}
	if read.ID != "" {
		t.Errorf("Read after Delete: id = %q, want empty so refresh drops it", read.ID)
	}
	if _, err := w.Delete(ctx, infer.DeleteRequest[LocalWorkerState]{ID: resp.ID, State: s}); err != nil {
		t.Errorf("Delete of a gone worker: %v", err)
	}
}

func TestLocalWorkerReadReportsStoppedSSHD(t *testing.T) {
	requireSSHD(t)
	t.Parallel()
	ctx := t.Context()
	k := newKeys(t)
	args := LocalWorkerArgs{TrainID: "tr-stopped", HostPrivateKey: k.hostPEM, AuthorizedKey: k.authorized, BaseDir: safeBaseDir(t)}
	resp := createWorker(t, ctx, args)
	if err := syscall.Kill(resp.Output.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !sshd.ProcessGone(resp.Output.PID) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	w := &LocalWorker{}
	read, err := w.Read(ctx, infer.ReadRequest[LocalWorkerArgs, LocalWorkerState]{ID: resp.ID, Inputs: args, State: resp.Output})
	if err != nil {
		t.Fatal(err)
	}
	if read.ID != resp.ID || read.State.Running {
		t.Errorf("Read of a worker whose sshd stopped: id %q running %v; want kept, not running", read.ID, read.State.Running)
	}
}

// An sshd that has not written its pid file yet (Create cancelled at the wrong moment),
// with no pid in state, is still found by its config file and stopped.
func TestLocalWorkerDeleteWithoutPIDFile(t *testing.T) {
	requireSSHD(t)
	t.Parallel()
	ctx := t.Context()
	k := newKeys(t)
	args := LocalWorkerArgs{TrainID: "tr-nopid", HostPrivateKey: k.hostPEM, AuthorizedKey: k.authorized, BaseDir: safeBaseDir(t)}
	resp := createWorker(t, ctx, args)
	pid := resp.Output.PID
	if err := os.Remove(filesOf(resp.Output.Dir).PIDFile); err != nil {
		t.Fatal(err)
	}
	state := resp.Output
	state.PID = 0
	if _, err := (&LocalWorker{}).Delete(ctx, infer.DeleteRequest[LocalWorkerState]{ID: resp.ID, State: state}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if !sshd.ProcessGone(pid) {
		t.Errorf("sshd %d still runs", pid)
	}
	if _, err := os.Stat(state.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("worker dir after Delete: %v", err)
	}
}

func TestLocalWorkerPreviewStartsNothing(t *testing.T) {
	t.Parallel()
	k := newKeys(t)
	base := filepath.Join(t.TempDir(), "workers")
	resp, err := (&LocalWorker{}).Create(t.Context(), infer.CreateRequest[LocalWorkerArgs]{
		Name:   "worker",
		Inputs: LocalWorkerArgs{TrainID: "tr-preview", HostPrivateKey: k.hostPEM, AuthorizedKey: k.authorized, BaseDir: base, SSHDPath: "/bin/sh"},
		DryRun: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.ID != "" || resp.Output.Dir != "" || resp.Output.Port != 0 {
		t.Errorf("preview = %+v; want inputs only", resp)
	}
	if _, err := os.Stat(base); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("preview touched %s: %v", base, err)
	}
}

func TestLocalWorkerCreateRejectsBadInputs(t *testing.T) {
	t.Parallel()
	k := newKeys(t)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPub, err := ssh.NewPublicKey(&ecKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ecLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ecPub)))
	ecBlock, err := ssh.MarshalPrivateKey(ecKey, "")
	if err != nil {
		t.Fatal(err)
	}
	ecPEM := string(pem.EncodeToMemory(ecBlock))
	good := LocalWorkerArgs{TrainID: "tr-bad", HostPrivateKey: k.hostPEM, AuthorizedKey: k.authorized, SSHDPath: "/bin/sh"}
	cases := map[string]func(a *LocalWorkerArgs){
		"empty train id":       func(a *LocalWorkerArgs) { a.TrainID = "" },
		"train id with slash":  func(a *LocalWorkerArgs) { a.TrainID = "../x" },
		"host key not a key":   func(a *LocalWorkerArgs) { a.HostPrivateKey = "not a key" },
		"authorized key ecdsa": func(a *LocalWorkerArgs) { a.AuthorizedKey = ecLine },
		"host key ecdsa":       func(a *LocalWorkerArgs) { a.HostPrivateKey = ecPEM },
		"two authorized keys":  func(a *LocalWorkerArgs) { a.AuthorizedKey = k.authorized + "\n" + k.authorized },
		"relative base dir":    func(a *LocalWorkerArgs) { a.BaseDir = "workers" },
		"relative sshd path":   func(a *LocalWorkerArgs) { a.SSHDPath = "sshd" },
		"missing sshd":         func(a *LocalWorkerArgs) { a.SSHDPath = "/nonexistent/sshd" },
		"run as root":          func(a *LocalWorkerArgs) { a.RunAs = "root" },
		"run as unknown user":  func(a *LocalWorkerArgs) { a.RunAs = "no-such-user-understudy" },
		"world-writable base": func(a *LocalWorkerArgs) {
			a.BaseDir = filepath.Join(a.BaseDir, "open")
			if err := os.Mkdir(a.BaseDir, 0o777); err != nil {
				panic(err)
			}
			if err := os.Chmod(a.BaseDir, 0o777); err != nil {
				panic(err)
			}
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			args := good
			args.BaseDir = safeBaseDir(t)
			mutate(&args)
			resp, err := (&LocalWorker{}).Create(t.Context(), infer.CreateRequest[LocalWorkerArgs]{Name: "worker", Inputs: args})
			if err == nil {
				(&LocalWorker{}).Delete(t.Context(), infer.DeleteRequest[LocalWorkerState]{ID: resp.ID, State: resp.Output})
				t.Fatal("Create succeeded")
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Errorf("error quotes key material: %v", err)
			}
			if resp.Output.Dir != "" {
				t.Errorf("failed Create left state %+v", resp.Output)
			}
		})
	}
}

func TestLocalWorkerCreateCleansUpWhenSSHDFails(t *testing.T) {
	requireSSHD(t)
	t.Parallel()
	k := newKeys(t)
	base := safeBaseDir(t)
	// An "sshd" that exits with an error, as sshd does on a bad config.
	fake := filepath.Join(base, "fake-sshd")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'fatal: no' >&2\nexit 255\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := (&LocalWorker{}).Create(t.Context(), infer.CreateRequest[LocalWorkerArgs]{
		Name:   "worker",
		Inputs: LocalWorkerArgs{TrainID: "tr-fail", HostPrivateKey: k.hostPEM, AuthorizedKey: k.authorized, BaseDir: base, SSHDPath: fake},
	})
	if err == nil {
		t.Fatal("Create succeeded with an sshd that fails")
	}
	var initFailed infer.ResourceInitFailedError
	if errors.As(err, &initFailed) {
		t.Fatalf("Create kept a partial worker although cleanup can succeed: %v", initFailed.Reasons)
	}
	entries, err := os.ReadDir(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "fake-sshd" {
			t.Errorf("failed Create left %s", e.Name())
		}
	}
}

func TestLocalWorkerDeleteRefusesForeignDir(t *testing.T) {
	t.Parallel()
	base := safeBaseDir(t)
	foreign := filepath.Join(t.TempDir(), "tr-x-123")
	if err := os.Mkdir(foreign, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := (&LocalWorker{}).Delete(t.Context(), infer.DeleteRequest[LocalWorkerState]{
		ID:    "local-tr-x-123",
		State: LocalWorkerState{LocalWorkerArgs: LocalWorkerArgs{TrainID: "tr-x", BaseDir: base}, Dir: foreign},
	})
	if err == nil {
		t.Fatal("Delete accepted a directory outside baseDir")
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Errorf("Delete removed a foreign directory: %v", err)
	}
}

func TestKillTaggedEndsOnlyTaggedProcesses(t *testing.T) {
	t.Parallel()
	tag := WorkerEnv + "=" + t.TempDir()
	start := func(env ...string) *exec.Cmd {
		cmd := exec.Command("sleep", "600")
		cmd.Env = append(os.Environ(), env...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
		return cmd
	}
	// A process that ignores SIGTERM must still end, by SIGKILL.
	stubborn := exec.Command("sh", "-c", "trap '' TERM; while :; do sleep 0.1; done")
	stubborn.Env = append(os.Environ(), tag)
	var out bytes.Buffer
	stubborn.Stdout = &out
	if err := stubborn.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stubborn.Process.Kill(); _, _ = stubborn.Process.Wait() })
	tagged := start(tag)
	prefixOnly := start(tag + "0")
	untagged := start()

	waited := map[int]chan struct{}{}
	for _, c := range []*exec.Cmd{tagged, stubborn} {
		ch := make(chan struct{})
		waited[c.Process.Pid] = ch
		go func(c *exec.Cmd) { _, _ = c.Process.Wait(); close(ch) }(c)
	}
	if err := sshd.KillTagged(t.Context(), tag); err != nil {
		t.Fatal(err)
	}
	for pid, ch := range waited {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Errorf("tagged process %d still runs", pid)
		}
	}
	for _, c := range []*exec.Cmd{prefixOnly, untagged} {
		if sshd.ProcessGone(c.Process.Pid) {
			t.Errorf("process %d without the exact tag was ended", c.Process.Pid)
		}
	}
}

// A worker whose jobs run as another user: started by root, its sessions run as that user,
// who writes the work dir and reads nothing else of the worker (host key, config, log).
func TestLocalWorkerRunsAsAnotherUser(t *testing.T) {
	requireSSHD(t)
	testenv.RequireRoot(t, "a worker whose sessions run as another user")
	ctx := t.Context()
	u, err := sysuser.Ensure(ctx, sysuser.DefaultWorker)
	if err != nil {
		t.Fatal(err)
	}
	// Root's own cache dir is closed to the user: the base dir goes where it can pass.
	if err := os.MkdirAll("/var/lib/understudy-test", 0o755); err != nil {
		t.Fatal(err)
	}
	base, err := os.MkdirTemp("/var/lib/understudy-test", "provider-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o711); err != nil {
		t.Fatal(err)
	}
	k := newKeys(t)
	args := LocalWorkerArgs{TrainID: "tr-run-as", HostPrivateKey: k.hostPEM, AuthorizedKey: k.authorized, BaseDir: base, RunAs: u.Username}
	resp := createWorker(t, ctx, args)
	s := resp.Output
	if s.User != u.Username {
		t.Fatalf("user = %q, want %q", s.User, u.Username)
	}
	c, err := dialWorker(ctx, s, k.userSigner, k.hostPub)
	if err != nil {
		t.Fatalf("dial worker: %v", err)
	}
	defer c.Close()
	// The user has no home (sshd says so on stderr): read stdout alone.
	stdout := func(cmd string) string {
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		out, err := sess.Output(cmd)
		if err != nil {
			t.Fatalf("run %q: %v", cmd, err)
		}
		return strings.TrimSpace(string(out))
	}
	if got := stdout("id -u"); got != u.Uid {
		t.Errorf("session uid = %s, want %s", got, u.Uid)
	}
	if got := stdout("cd " + s.WorkDir + " && echo hi > x && cat x"); got != "hi" {
		t.Errorf("work dir write/read = %q", got)
	}
	f := filesOf(s.Dir)
	for _, name := range []string{f.HostKey, f.Config, f.Log, f.tags, s.Dir + "/."} {
		if out := stdout("cat " + name + " >/dev/null 2>&1 && echo readable || echo refused"); out != "refused" {
			t.Errorf("the job's user reads %s", name)
		}
	}
	if out := stdout("ls " + s.Dir + " >/dev/null 2>&1 && echo listed || echo refused"); out != "refused" {
		t.Errorf("the job's user lists the worker dir")
	}
}
