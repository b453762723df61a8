package sshrunner_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/sshrunner"
	"github.com/understudy-ai/training-service/sshrunner/sshdtest"
)

// testLogger writes to t.Log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// dial connects to srv's target and closes the client when t ends.
func dial(t testing.TB, target sshrunner.Target) *sshrunner.Client {
	t.Helper()
	c, err := sshrunner.Dial(testContext(t), target, &sshrunner.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

func TestDial(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	out, err := c.Run(testContext(t), "echo hello; id -un")
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if want := "hello\n" + srv.User + "\n"; string(out) != want {
		t.Fatalf("Run output = %q, want %q", out, want)
	}
}

func TestDialRefusesWrongHostKey(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	target := srv.Target()
	target.HostKey = string(ssh.MarshalAuthorizedKey(other))
	c, err := sshrunner.Dial(testContext(t), target, nil)
	if err == nil {
		c.Close()
		t.Fatal("Dial with the wrong pinned host key succeeded")
	}
	if !errors.Is(err, sshrunner.ErrHostKeyMismatch) {
		t.Errorf("error %v does not wrap ErrHostKeyMismatch", err)
	}
	if got := job.CodeOf(err); got != job.CodeFailedPrecondition {
		t.Errorf("code = %s, want %s (error %v)", got, job.CodeFailedPrecondition, err)
	}
	if !strings.Contains(err.Error(), ssh.FingerprintSHA256(other)) {
		t.Errorf("error %q does not name the pinned key's fingerprint", err)
	}
}

func TestDialRequiresHostKey(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	target := srv.Target()
	target.HostKey = ""
	c, err := sshrunner.Dial(testContext(t), target, nil)
	if err == nil {
		c.Close()
		t.Fatal("Dial without a pinned host key succeeded")
	}
	if got := job.CodeOf(err); got != job.CodeInvalidArgument {
		t.Errorf("code = %s, want %s (error %v)", got, job.CodeInvalidArgument, err)
	}
}

func TestDialRefusedClientKey(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	target := srv.Target()
	target.Signer, err = ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	c, err := sshrunner.Dial(testContext(t), target, nil)
	if err == nil {
		c.Close()
		t.Fatal("Dial with an unknown client key succeeded")
	}
	if got := job.CodeOf(err); got != job.CodeUnauthenticated {
		t.Errorf("code = %s, want %s (error %v)", got, job.CodeUnauthenticated, err)
	}
}

// silentListener accepts TCP connections and never speaks SSH: only a context or a timeout
// can end a handshake with it. It returns the port.
func silentListener(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted = append(accepted, c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		for _, c := range accepted {
			c.Close()
		}
	})
	return l.Addr().(*net.TCPAddr).Port
}

func TestDialCancelled(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t) // for a valid key pair
	target := srv.Target()
	target.Port = silentListener(t)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	c, err := sshrunner.Dial(ctx, target, nil)
	if err == nil {
		c.Close()
		t.Fatal("Dial to a silent server succeeded")
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("Dial returned %v after the cancel", elapsed)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v does not wrap context.Canceled", err)
	}
	if got := job.CodeOf(err); got != job.CodeCanceled {
		t.Errorf("code = %s, want %s (error %v)", got, job.CodeCanceled, err)
	}
}

func TestDialTimeout(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	target := srv.Target()
	target.Port = silentListener(t)
	c, err := sshrunner.Dial(testContext(t), target, &sshrunner.Options{DialTimeout: 300 * time.Millisecond})
	if err == nil {
		c.Close()
		t.Fatal("Dial to a silent server succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not wrap context.DeadlineExceeded", err)
	}
	if got := job.CodeOf(err); got != job.CodeUnavailable {
		t.Errorf("code = %s, want %s (error %v)", got, job.CodeUnavailable, err)
	}
}

func TestDialUnreachable(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close() // nothing listens there now
	target := srv.Target()
	target.Port = port
	c, err := sshrunner.Dial(testContext(t), target, nil)
	if err == nil {
		c.Close()
		t.Fatal("Dial to a closed port succeeded")
	}
	if got := job.CodeOf(err); got != job.CodeUnavailable {
		t.Errorf("code = %s, want %s (error %v)", got, job.CodeUnavailable, err)
	}
}

func TestRunExitError(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	out, err := c.Run(testContext(t), "echo partial; echo boom >&2; exit 7")
	var ee *sshrunner.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("Run error = %v, want *ExitError", err)
	}
	if ee.Code != 7 || strings.TrimSpace(string(ee.Stderr)) != "boom" {
		t.Errorf("ExitError = {%d, %q}, want {7, \"boom\"}", ee.Code, ee.Stderr)
	}
	if string(out) != "partial\n" {
		t.Errorf("stdout = %q, want %q", out, "partial\n")
	}
}

func TestRunCancelled(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.Run(ctx, "sleep 30")
	if err == nil {
		t.Fatal("Run of a cancelled command succeeded")
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("Run returned %v after the cancel", elapsed)
	}
	if got := job.CodeOf(err); got != job.CodeCanceled {
		t.Errorf("code = %s, want %s (error %v)", got, job.CodeCanceled, err)
	}
	// The connection is still usable.
	if _, err := c.Run(testContext(t), "true"); err != nil {
		t.Errorf("Run after a cancelled Run: %v", err)
	}
}
