package sshrunner

import (
	"bytes"
	"context"
	"errors"
	"sync"

	"golang.org/x/crypto/ssh"
)

// maxStderr bounds the stderr Run keeps for an ExitError.
const maxStderr = 64 << 10

// Run runs cmd with sh on the machine, stdin empty, and returns its stdout. A non-zero
// exit is an *ExitError carrying the tail of stderr. When ctx ends first, the command's
// process group is killed and the error has code Canceled.
func (c *Client) Run(ctx context.Context, cmd string) ([]byte, error) {
	stdout, err := c.run(ctx, cmd)
	if err != nil {
		var ee *ExitError
		if errors.As(err, &ee) {
			return stdout, err
		}
		return stdout, opError(ctx, err, "run command")
	}
	return stdout, nil
}

// killOnHangup wraps cmd so that closing the session kills it. OpenSSH does not pass a
// session's signal request on for root logins, and closing a session does not end a command
// that has no terminal; but it does close the command's stdin. So the command runs in a
// process group of its own, and a watcher that reads the session's stdin kills that group
// when it sees end of file. The watcher kills the process itself too, and the group again
// a second later: the hangup can come before setsid has made the group.
func killOnHangup(cmd string) string {
	script := `exec 3<&0 </dev/null
setsid sh -c ` + shellQuote(cmd) + ` 3<&- & p=$!
(read -r _ <&3; kill -KILL "$p" -"$p"; sleep 1; kill -KILL -"$p") >/dev/null 2>&1 & w=$!
exec 3<&-
wait "$p"; rc=$?
kill "$w" 2>/dev/null
exit "$rc"`
	return "sh -c " + shellQuote(script)
}

func (c *Client) run(ctx context.Context, cmd string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s, err := c.conn.NewSession()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var stdout bytes.Buffer
	stderr := &tailBuffer{max: maxStderr}
	s.Stdout = &stdout
	s.Stderr = stderr
	// Never written: the session's stdin stays open until the session closes.
	stdin, err := s.StdinPipe()
	if err != nil {
		return nil, err
	}
	defer stdin.Close()
	stop := context.AfterFunc(ctx, func() {
		// OpenSSH 8.1 and later deliver the signal to the command; older servers only
		// see the channel close.
		_ = s.Signal(ssh.SIGKILL)
		_ = s.Close()
	})
	defer stop()
	err = s.Run(killOnHangup(cmd))
	if ctxErr := ctx.Err(); ctxErr != nil && err != nil {
		return stdout.Bytes(), ctxErr
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return stdout.Bytes(), &ExitError{Code: ee.ExitStatus(), Stderr: stderr.Bytes()}
	}
	if err != nil {
		// Includes *ssh.ExitMissingError: the connection went before the status came.
		return stdout.Bytes(), err
	}
	return stdout.Bytes(), nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf)
}
