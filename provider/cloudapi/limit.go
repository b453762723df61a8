package cloudapi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Limiter spaces out requests.
type Limiter interface {
	// Wait blocks until a request may be made, or ctx ends.
	Wait(ctx context.Context) error
}

// FileInterval allows one request per Every across every process of this host that uses
// the same Path: each engine run starts its own provider process, so an in-process limit
// alone would let concurrent jobs exceed a cloud's per-account rate. The file holds the
// time of the last request and is locked with flock while it is read and written.
type FileInterval struct {
	Path  string
	Every time.Duration
	// local serialises the goroutines of this process before they take the file lock.
	local sync.Mutex
}

// Wait implements Limiter.
func (l *FileInterval) Wait(ctx context.Context) error {
	l.local.Lock()
	defer l.local.Unlock()
	if err := os.MkdirAll(filepath.Dir(l.Path), 0o700); err != nil {
		return fmt.Errorf("rate limit file: %w", err)
	}
	f, err := os.OpenFile(l.Path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("rate limit file: %w", err)
	}
	defer f.Close()
	if err := flock(ctx, f); err != nil {
		return err
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	buf := make([]byte, 64)
	n, _ := f.ReadAt(buf, 0)
	var last time.Time
	if ns, err := strconv.ParseInt(strings.TrimSpace(string(buf[:n])), 10, 64); err == nil {
		last = time.Unix(0, ns)
	}
	at := last.Add(l.Every)
	if now := time.Now(); at.Before(now) || at.After(now.Add(l.Every)) {
		// Never waited for, or a clock that went backwards: go now.
		at = now
	}
	if err := sleepUntil(ctx, at); err != nil {
		return err
	}
	stamp := strconv.FormatInt(time.Now().UnixNano(), 10)
	// A failed write only weakens the limit for the next caller; the server's 429s remain.
	if f.Truncate(0) == nil {
		_, _ = f.WriteAt([]byte(stamp), 0)
	}
	return nil
}

// flock takes an exclusive lock on f, polling so that ctx is honoured.
func flock(ctx context.Context, f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if err != syscall.EWOULDBLOCK {
			return fmt.Errorf("lock rate limit file: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func sleepUntil(ctx context.Context, at time.Time) error {
	d := time.Until(at)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// RateDir is the directory for the cross-process rate limit files: $UNDERSTUDY_RATE_DIR,
// else the user's cache directory.
func RateDir() string {
	if d := os.Getenv("UNDERSTUDY_RATE_DIR"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "understudy", "rate")
	}
	return filepath.Join(os.TempDir(), "understudy-rate-"+strconv.Itoa(os.Getuid()))
}
