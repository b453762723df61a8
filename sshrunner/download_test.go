package sshrunner_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/sshrunner"
	"github.com/understudy-ai/training-service/sshrunner/sshdtest"
)

// writeOutputDir writes a model-like output directory and returns the manifest it should
// produce.
func writeOutputDir(t *testing.T, dir string) sshrunner.Manifest {
	t.Helper()
	files := map[string][]byte{
		"config.json":                  []byte(`{"model_type":"gpt2"}`),
		"empty.txt":                    nil,
		"model.safetensors":            random(t, 5<<20+12345), // several chunks, the last one short
		"tokenizer/vocab.json":         random(t, 300_000),
		"tokenizer/merges.txt":         random(t, 1<<20), // exactly one chunk
		"ckpt/step-00000020/optim.bin": random(t, 777),
	}
	var m sshrunner.Manifest
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		m.Files = append(m.Files, sshrunner.File{Path: name, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])})
	}
	// A symbolic link to a file is copied as that file.
	if err := os.Symlink("config.json", filepath.Join(dir, "link.json")); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(files["config.json"])
	m.Files = append(m.Files, sshrunner.File{Path: "link.json", Size: int64(len(files["config.json"])), SHA256: hex.EncodeToString(sum[:])})
	sortManifest(m)
	return m
}

func sortManifest(m sshrunner.Manifest) {
	for i := range m.Files {
		for j := i + 1; j < len(m.Files); j++ {
			if m.Files[j].Path < m.Files[i].Path {
				m.Files[i], m.Files[j] = m.Files[j], m.Files[i]
			}
		}
	}
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func openBucket(t *testing.T) (*blob.Bucket, string) {
	t.Helper()
	dir := t.TempDir()
	b, err := fileblob.OpenBucket(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, dir
}

// sessionLog records the numbers of SFTP sessions and SSH connections Download chose.
type sessionLog struct {
	mu          sync.Mutex
	sessions    []int64
	connections []int64
}

func (h *sessionLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *sessionLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *sessionLog) WithGroup(string) slog.Handler            { return h }
func (h *sessionLog) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if r.Message == "download sessions" && (a.Key == "sessions" || a.Key == "connections") {
			h.mu.Lock()
			if a.Key == "sessions" {
				h.sessions = append(h.sessions, a.Value.Int64())
			} else {
				h.connections = append(h.connections, a.Value.Int64())
			}
			h.mu.Unlock()
		}
		return true
	})
	return nil
}

// Without Sessions and Connections set, Download sizes both by the measured round trip:
// one over loopback, where more only compete for the CPU, the most over a long path, where
// one TCP connection's window would be the limit; and it dials the connections it chose.
func TestDownloadSessionsFollowTheRoundTrip(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	remote := t.TempDir()
	want := writeOutputDir(t, remote)
	delayed := startDelayProxy(t, fmt.Sprintf("127.0.0.1:%d", srv.Port), 15*time.Millisecond)
	for _, tc := range []struct {
		name string
		port int
		// The sessions chosen, at least and at most: over loopback one, or two when the test
		// machine is so busy that a request takes more than ~1.7 ms (sessionsFor's table is
		// its own test).
		least, most int64
		// The connections chosen (connectionsFor's table is its own test).
		connections int64
	}{
		{"loopback", srv.Port, 1, 2, 1},
		{"30 ms round trip", delayed.port(), 4, 4, 4},
	} {
		log := &sessionLog{}
		target := srv.Target()
		target.Port = tc.port
		ctx := testContext(t)
		c, err := sshrunner.Dial(ctx, target, &sshrunner.Options{Logger: slog.New(log)})
		if err != nil {
			t.Fatalf("%s: Dial: %v", tc.name, err)
		}
		bucket, _ := openBucket(t)
		got, err := c.Download(ctx, remote, bucket, "w", &sshrunner.DownloadOptions{ChunkSize: 1 << 20})
		c.Close()
		if err != nil || len(got.Files) != len(want.Files) {
			t.Fatalf("%s: Download: %v (%d files)", tc.name, err, len(got.Files))
		}
		if len(log.sessions) != 1 || log.sessions[0] < tc.least || log.sessions[0] > tc.most {
			t.Errorf("%s: sessions chosen %v, want %d to %d", tc.name, log.sessions, tc.least, tc.most)
		}
		if len(log.connections) != 1 || log.connections[0] != tc.connections {
			t.Errorf("%s: connections chosen %v, want %d", tc.name, log.connections, tc.connections)
		}
	}
	// Over the long path: Dial's connection and the three Download added.
	if n := delayed.accepted(); n != 4 {
		t.Errorf("the long path carried %d connections, want 4", n)
	}
}

func TestDownloadVerify(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	ctx := testContext(t)
	remote := t.TempDir()
	want := writeOutputDir(t, remote)
	bucket, bucketDir := openBucket(t)

	// Small chunks over two connections and three sessions: chunks of one file come back
	// through different sessions and must still be stored in order.
	got, err := c.Download(ctx, remote, bucket, "jobs/j1/weights/", &sshrunner.DownloadOptions{ChunkSize: 1 << 20, Connections: 2, Sessions: 3})
	if err != nil {
		t.Fatalf("Download: %v", err)
	}
	if len(got.Files) != len(want.Files) {
		t.Fatalf("manifest %+v, want %+v", got, want)
	}
	for i := range want.Files {
		if got.Files[i] != want.Files[i] {
			t.Errorf("file %d: %+v, want %+v", i, got.Files[i], want.Files[i])
		}
	}
	for _, f := range want.Files {
		a, err := os.ReadFile(filepath.Join(remote, f.Path))
		if err != nil {
			t.Fatal(err)
		}
		b, err := bucket.ReadAll(ctx, "jobs/j1/weights/"+f.Path)
		if err != nil {
			t.Errorf("stored %s: %v", f.Path, err)
		} else if string(a) != string(b) {
			t.Errorf("stored %s differs", f.Path)
		}
	}
	if err := sshrunner.Verify(ctx, bucket, "jobs/j1/weights", got); err != nil {
		t.Fatalf("Verify: %v", err)
	}

	// Corrupt one byte of a stored file: same size, other hash.
	stored := filepath.Join(bucketDir, "jobs", "j1", "weights", "model.safetensors")
	data, err := os.ReadFile(stored)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(stored, data, 0o644); err != nil {
		t.Fatal(err)
	}
	err = sshrunner.Verify(ctx, bucket, "jobs/j1/weights", got)
	if !errors.Is(err, sshrunner.ErrChecksumMismatch) || job.ReasonOf(err) != "checksum_mismatch" || job.CodeOf(err) != job.CodeFailedPrecondition {
		t.Errorf("Verify of a corrupted file: %v, want a checksum mismatch", err)
	}
	// Truncated.
	if err := os.WriteFile(stored, data[:100], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sshrunner.Verify(ctx, bucket, "jobs/j1/weights", got); !errors.Is(err, sshrunner.ErrChecksumMismatch) {
		t.Errorf("Verify of a truncated file: %v, want a checksum mismatch", err)
	}
	// Missing.
	if err := os.Remove(stored); err != nil {
		t.Fatal(err)
	}
	if err := sshrunner.Verify(ctx, bucket, "jobs/j1/weights", got); job.CodeOf(err) != job.CodeNotFound {
		t.Errorf("Verify of a missing file: %v, want code %s", err, job.CodeNotFound)
	}
}

func TestDownloadExpected(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	ctx := testContext(t)
	remote := t.TempDir()
	want := writeOutputDir(t, remote)

	expected := map[string]string{}
	for _, f := range want.Files {
		expected[f.Path] = f.SHA256
	}
	bucket, _ := openBucket(t)
	if _, err := c.Download(ctx, remote, bucket, "ok", &sshrunner.DownloadOptions{Expected: expected}); err != nil {
		t.Fatalf("Download with the right hashes: %v", err)
	}

	bad := map[string]string{}
	for k, v := range expected {
		bad[k] = v
	}
	bad["model.safetensors"] = hex.EncodeToString(make([]byte, 32))
	_, err := c.Download(ctx, remote, bucket, "bad", &sshrunner.DownloadOptions{Expected: bad})
	if !errors.Is(err, sshrunner.ErrChecksumMismatch) || job.ReasonOf(err) != "checksum_mismatch" {
		t.Fatalf("Download with a wrong hash: %v, want a checksum mismatch", err)
	}
	if ok, err := bucket.Exists(ctx, "bad/model.safetensors"); err != nil || ok {
		t.Errorf("the mismatched file was stored (exists %v, %v)", ok, err)
	}

	_, err = c.Download(ctx, remote, bucket, "missing", &sshrunner.DownloadOptions{Expected: map[string]string{"nope.bin": expected["config.json"]}})
	if !errors.Is(err, sshrunner.ErrChecksumMismatch) {
		t.Errorf("Download expecting a missing file: %v, want a checksum mismatch", err)
	}
	_, err = c.Download(ctx, remote, bucket, "x", &sshrunner.DownloadOptions{Expected: map[string]string{"config.json": "zz"}})
	if job.CodeOf(err) != job.CodeInvalidArgument {
		t.Errorf("Download with a malformed hash: %v, want code %s", err, job.CodeInvalidArgument)
	}
	_, err = c.Download(ctx, filepath.Join(remote, "nope"), bucket, "x", nil)
	if job.CodeOf(err) != job.CodeNotFound {
		t.Errorf("Download of a missing dir: %v, want code %s", err, job.CodeNotFound)
	}
}

func TestDownloadCancelled(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	remote := t.TempDir()
	// Sparse: large to copy, nothing on disk.
	if err := os.Truncate(mustCreate(t, filepath.Join(remote, "model.safetensors")), 1<<30); err != nil {
		t.Fatal(err)
	}
	bucket, _ := openBucket(t)
	ctx, cancel := context.WithCancel(testContext(t))
	time.AfterFunc(300*time.Millisecond, cancel)
	_, err := c.Download(ctx, remote, bucket, "w", nil)
	if job.CodeOf(err) != job.CodeCanceled {
		t.Fatalf("Download cancelled midway: %v, want code %s", err, job.CodeCanceled)
	}
	if ok, err := bucket.Exists(context.Background(), "w/model.safetensors"); err != nil || ok {
		t.Errorf("a cancelled download stored the file (exists %v, %v)", ok, err)
	}
	// The connection still works.
	if _, err := c.Run(testContext(t), "true"); err != nil {
		t.Errorf("Run after a cancelled Download: %v", err)
	}
}

func mustCreate(t *testing.T, name string) string {
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return name
}
