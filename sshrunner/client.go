package sshrunner

import (
	"bufio"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/job"
)

// Target is a machine to reach: its address, the login user, the host key the service
// generated for it and the client key it accepts.
type Target struct {
	Host string
	Port int // 22 when zero
	User string
	// HostKey is the machine's public host key in authorized_keys format
	// ("ssh-ed25519 AAAA..."). It is required: the key is always pinned.
	HostKey string
	Signer  ssh.Signer
}

// Options tunes Dial. A nil *Options means the defaults.
type Options struct {
	// Logger receives debug and warning records; nil discards them.
	Logger *slog.Logger
	// DialTimeout bounds the TCP connect and the SSH handshake together; default 30s.
	// The context passed to Dial still applies.
	DialTimeout time.Duration
	// KeepaliveInterval is how often an idle connection is probed; default 15s, negative
	// turns probing off. After KeepaliveMaxMissed unanswered probes in a row the connection
	// is closed, so that a stream on it fails with code Unavailable instead of hanging.
	KeepaliveInterval  time.Duration
	KeepaliveMaxMissed int // default 3
}

func (o *Options) withDefaults() Options {
	var r Options
	if o != nil {
		r = *o
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	if r.DialTimeout <= 0 {
		r.DialTimeout = 30 * time.Second
	}
	if r.KeepaliveInterval == 0 {
		r.KeepaliveInterval = 15 * time.Second
	}
	if r.KeepaliveMaxMissed <= 0 {
		r.KeepaliveMaxMissed = 3
	}
	return r
}

// ErrHostKeyMismatch is wrapped by the error Dial returns when the machine presents a host
// key other than the pinned one.
var ErrHostKeyMismatch = errors.New("host key mismatch")

// preferredCiphers puts AES-GCM first: with AES-NI it is the fastest cipher on both ends,
// which matters for downloading weights. ChaCha20 stays for machines without AES-NI.
var preferredCiphers = []string{
	ssh.CipherAES128GCM,
	ssh.CipherAES256GCM,
	ssh.CipherChaCha20Poly1305,
	ssh.CipherAES128CTR,
	ssh.CipherAES256CTR,
}

// Client is an SSH connection to one machine. Its methods may be called concurrently.
type Client struct {
	conn   *ssh.Client
	target Target
	opts   Options // with defaults, for extra connections
	log    *slog.Logger

	closeOnce sync.Once
	closeErr  error
	done      chan struct{}
	wg        sync.WaitGroup
}

// Dial connects to t, checks that the machine presents exactly t.HostKey, and logs in with
// t.Signer. ctx bounds the connect and the handshake only; the Client lives until Close.
func Dial(ctx context.Context, t Target, opts *Options) (*Client, error) {
	o := opts.withDefaults()
	if t.Host == "" || t.User == "" || t.Signer == nil {
		return nil, job.Errorf(job.CodeInvalidArgument, "dial machine: host, user and signer are required")
	}
	if t.Port == 0 {
		t.Port = 22
	}
	pinned, _, _, _, err := ssh.ParseAuthorizedKey([]byte(t.HostKey))
	if err != nil {
		return nil, job.Wrap(job.CodeInvalidArgument, err, "dial machine: parse pinned host key")
	}
	addr := net.JoinHostPort(t.Host, strconv.Itoa(t.Port))

	cfg := &ssh.ClientConfig{
		Config:            ssh.Config{Ciphers: preferredCiphers},
		User:              t.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(t.Signer)},
		HostKeyCallback:   pinnedHostKey(pinned),
		HostKeyAlgorithms: hostKeyAlgorithms(pinned),
	}

	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	defer cancel()

	d := net.Dialer{KeepAlive: 30 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, dialError(parent, ctx, err, "dial machine")
	}
	// ssh.NewClientConn takes no context: a deadline bounds it, and cancelling ctx closes
	// the socket under it.
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(readBuffered(nc), addr, cfg)
	if !stop() || err != nil {
		_ = nc.Close()
		if err == nil {
			sc.Close()
			err = ctx.Err()
		}
		switch {
		case errors.Is(err, ErrHostKeyMismatch):
			return nil, job.Wrap(job.CodeFailedPrecondition, err, "verify host key")
		case err != nil && strings.Contains(err.Error(), "unable to authenticate"):
			// x/crypto/ssh has no typed error for a refused key.
			return nil, job.Wrap(job.CodeUnauthenticated, err, "log in to machine")
		}
		return nil, dialError(parent, ctx, err, "handshake with machine")
	}
	_ = nc.SetDeadline(time.Time{})

	c := &Client{
		conn:   ssh.NewClient(sc, chans, reqs),
		target: t,
		opts:   o,
		log:    o.Logger.With("host", t.Host, "port", t.Port),
		done:   make(chan struct{}),
	}
	if o.KeepaliveInterval > 0 {
		c.wg.Add(1)
		go c.keepalive(o.KeepaliveInterval, o.KeepaliveMaxMissed)
	}
	c.log.Debug("connected", "server_version", string(sc.ServerVersion()))
	return c, nil
}

// dialError classifies a failed dial: the caller's context ended (Canceled), or the
// machine could not be reached or did not answer within the dial timeout (Unavailable,
// worth another try).
func dialError(parent, dial context.Context, err error, msg string) error {
	if ctxErr := parent.Err(); ctxErr != nil {
		if !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w: %w", ctxErr, err)
		}
		return job.Wrap(job.CodeCanceled, err, "%s", msg)
	}
	ctxErr := dial.Err()
	if ctxErr == nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// The socket deadline, which is the dial deadline, can fire before the context's.
		ctxErr = context.DeadlineExceeded
	}
	if ctxErr != nil && !errors.Is(err, ctxErr) {
		err = fmt.Errorf("%w: %w", ctxErr, err)
	}
	return job.Wrap(job.CodeUnavailable, err, "%s", msg)
}

// pinnedHostKey accepts exactly key. Unlike ssh.FixedHostKey its error wraps
// ErrHostKeyMismatch and names both fingerprints, so an operator can tell what happened.
func pinnedHostKey(key ssh.PublicKey) ssh.HostKeyCallback {
	want := key.Marshal()
	return func(_ string, _ net.Addr, got ssh.PublicKey) error {
		if subtle.ConstantTimeCompare(got.Marshal(), want) == 1 {
			return nil
		}
		return fmt.Errorf("%w: machine presented %s %s, pinned %s %s", ErrHostKeyMismatch,
			got.Type(), ssh.FingerprintSHA256(got), key.Type(), ssh.FingerprintSHA256(key))
	}
}

// hostKeyAlgorithms asks the server for the pinned key's type only, so that a server with
// several host keys shows the one that is pinned.
func hostKeyAlgorithms(key ssh.PublicKey) []string {
	if key.Type() == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	}
	return []string{key.Type()}
}

// keepalive probes the server every interval and closes the connection once maxMissed
// probes in a row went unanswered, which fails every session on it.
func (c *Client) keepalive(interval time.Duration, maxMissed int) {
	defer c.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	var reply chan error // the outstanding probe, nil when none
	missed := 0
	for {
		select {
		case <-c.done:
			return
		case err := <-reply:
			reply = nil
			if err != nil {
				c.log.Warn("keepalive failed, closing connection", "err", err)
				_ = c.conn.Close()
				return
			}
			missed = 0
		case <-t.C:
			if reply != nil {
				if missed++; missed >= maxMissed {
					c.log.Warn("machine stopped answering keepalives, closing connection", "missed", missed)
					_ = c.conn.Close()
					return
				}
				continue
			}
			reply = make(chan error, 1)
			c.wg.Add(1)
			go func(reply chan<- error) {
				defer c.wg.Done()
				// Returns once answered or once the connection is closed.
				_, _, err := c.conn.SendRequest("keepalive@openssh.com", true, nil)
				reply <- err
			}(reply)
		}
	}
}

// Close closes the connection. Detached runs keep going.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.closeErr = c.conn.Close()
		c.wg.Wait()
	})
	if c.closeErr != nil && !errors.Is(c.closeErr, net.ErrClosed) && !errors.Is(c.closeErr, io.EOF) {
		return job.Wrap(job.CodeUnavailable, c.closeErr, "close connection")
	}
	return nil
}

// sftpOptions are tuned for OpenSSH's sftp server, which answers reads of up to 255 KiB;
// anything larger comes back short.
const sftpMaxPacket = 255 * 1024

// openSFTP starts an SFTP session of its own for one operation; ctx ending closes it,
// which unblocks every request on it. The returned stop must be called when done.
func (c *Client) openSFTP(ctx context.Context, msg string, opts ...sftp.ClientOption) (*sftp.Client, func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, job.Wrap(job.CodeCanceled, err, "%s", msg)
	}
	sc, err := sftp.NewClient(c.conn, opts...)
	if err != nil {
		return nil, nil, opError(ctx, err, "%s: start sftp", msg)
	}
	stopAfter := context.AfterFunc(ctx, func() { _ = sc.Close() })
	return sc, func() { stopAfter(); _ = sc.Close() }, nil
}

// readBufferSize is the read buffer put under the SSH transport, whose own buffer is 4 KiB:
// reading the socket in large pieces saves system calls when weights stream in.
var readBufferSize = 256 << 10

type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func readBuffered(nc net.Conn) net.Conn {
	if readBufferSize <= 0 {
		return nc
	}
	return &bufferedConn{Conn: nc, r: bufio.NewReaderSize(nc, readBufferSize)}
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
