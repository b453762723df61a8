package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// lockName is the file in the data dir that one serve process holds locked.
const lockName = "serve.lock"

// prepareDataDir makes the data dir owner-only and takes the data dir's lock: two serve processes on one data dir would both
// resume and drive the same jobs. The lock is held until release is called (or the process
// ends: the kernel drops a dead process's lock, so a crash never leaves it stuck).
func prepareDataDir(dir string, log *slog.Logger) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if perm := st.Mode().Perm(); perm != 0o700 {
		// jobs.db, the weights and the keys must not be readable by anyone else.
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("data dir %s has mode %v and cannot be made owner-only: %w", dir, perm, err)
		}
		log.Warn("made the data dir owner-only", "data_dir", dir, "was", perm.String())
	}
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open data dir lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := "another process"
		if raw, rerr := os.ReadFile(f.Name()); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(raw))); perr == nil && pid > 0 {
				holder = "pid " + strconv.Itoa(pid)
			}
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &dataDirInUseError{fmt.Sprintf("data dir %s is in use by another understudy-train serve (%s): stop it first, or give this one another --data-dir", dir, holder)}
		}
		return nil, fmt.Errorf("lock data dir %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() {
		_ = f.Truncate(0)
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// dataDirInUseError is prepareDataDir's error when another process holds the lock.
type dataDirInUseError struct{ msg string }

func (e *dataDirInUseError) Error() string { return e.msg }

// prepareDataDirWaiting is prepareDataDir, waiting up to wait for another process to let
// the lock go: a replica that has just taken the lead of a shared store waits so for the
// previous leader, which shared its data dir, to finish stopping.
func prepareDataDirWaiting(ctx context.Context, dir string, log *slog.Logger, wait time.Duration) (func(), error) {
	deadline := time.Now().Add(wait)
	for {
		release, err := prepareDataDir(dir, log)
		var inUse *dataDirInUseError
		if !errors.As(err, &inUse) || time.Now().After(deadline) {
			return release, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
