package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/testenv"
)

func TestDataDirIsMadeOwnerOnlyAndLocked(t *testing.T) {
	dir := filepath.Join(testenv.SSHDDir(t, "datadir-"), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	release, err := prepareDataDir(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v, want 0700", st.Mode().Perm())
	}
	// A second serve on the same data dir is refused, naming the holder.
	_, err = prepareDataDir(dir, log)
	if err == nil || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second lock: %v, want a refusal naming pid %d", err, os.Getpid())
	}
	release()
	// Once released (or once its process is gone), the data dir can be taken again.
	release, err = prepareDataDir(dir, log)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	release()
}

// A replica that has just taken the lead waits for the previous leader to let the shared
// data dir go, up to a limit.
func TestDataDirWaitsForThePreviousHolder(t *testing.T) {
	dir := filepath.Join(testenv.SSHDDir(t, "datadir-"), "data")
	log := slog.New(slog.DiscardHandler)
	release, err := prepareDataDir(dir, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prepareDataDirWaiting(context.Background(), dir, log, 300*time.Millisecond); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("waiting past the limit: %v, want the data dir in use", err)
	}
	time.AfterFunc(300*time.Millisecond, release)
	start := time.Now()
	release2, err := prepareDataDirWaiting(context.Background(), dir, log, 10*time.Second)
	if err != nil {
		t.Fatalf("after the holder let go: %v", err)
	}
	release2()
	if waited := time.Since(start); waited < 250*time.Millisecond {
		t.Fatalf("took the data dir after %v, while it was still held", waited)
	}
}

func TestWorkersDirUnderAWorldWritableDirIsRefused(t *testing.T) {
	open := filepath.Join(testenv.SSHDDir(t, "datadir-"), "shared")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o1777); err != nil { // as /tmp is
		t.Fatal(err)
	}
	err := makeWorkersDir(filepath.Join(open, "workers"), false)
	if err == nil || !strings.Contains(err.Error(), open) || !strings.Contains(err.Error(), "not under /tmp") {
		t.Fatalf("err = %v, want a refusal naming %s", err, open)
	}
}

// A second serve on the same data dir and address is told that the data dir is in use, by
// whom, before it tries the address (which would only say that the port is taken).
func TestSecondServeNamesTheDataDirHolder(t *testing.T) {
	dir := filepath.Join(testenv.SSHDDir(t, "datadir-"), "data")
	release, err := prepareDataDir(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = serve(context.Background(), []string{"--data-dir", dir, "--listen", ln.Addr().String()}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "in use by another understudy-train serve (pid "+strconv.Itoa(os.Getpid())+")") {
		t.Fatalf("second serve: %v, want the data dir's holder named", err)
	}
}
