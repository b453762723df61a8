package storage_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/understudy-ai/training-service/internal/emulators"
	"github.com/understudy-ai/training-service/internal/testenv"
	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/sshrunner"
	"github.com/understudy-ai/training-service/sshrunner/sshdtest"
	"github.com/understudy-ai/training-service/storage"
)

// fileStore is the file:// store in the shape of the emulators, so that one table holds
// every kind of store.
type fileStore struct{ root string }

func (f fileStore) URL() string                  { return f.BucketURL("bucket") }
func (f fileStore) BucketURL(b string) string    { return "file://" + filepath.Join(f.root, b) }
func (f fileStore) ObjectURL(b, k string) string { return f.BucketURL(b) + "/" + k }
func (f fileStore) Env() []string                { return nil }
func (f fileStore) Setenv(testing.TB)            {}
func (f fileStore) NewBucket(t testing.TB) string {
	name := filepath.Base(t.TempDir())
	if err := os.MkdirAll(filepath.Join(f.root, name), 0o755); err != nil {
		t.Fatal(err)
	}
	return name
}

// stores is the table every conformance test runs over: one line per kind of store.
var stores = []struct {
	name  string
	start func(t *testing.T) emulators.Store
}{
	{"file", func(t *testing.T) emulators.Store {
		s := fileStore{root: t.TempDir()}
		s.NewBucket(t)
		return s
	}},
	{"s3", func(t *testing.T) emulators.Store { return emulators.StartS3(t) }},
	{"gcs", func(t *testing.T) emulators.Store { return emulators.StartGCS(t) }},
	{"azurite", func(t *testing.T) emulators.Store { return emulators.StartAzurite(t) }},
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestConformance runs the one suite every weights store passes: write, read back, list,
// a key prefix in the URL, refusal of a missing bucket, and weights downloaded over SSH from
// a real sshd, verified in the store, then caught corrupted, truncated and missing. The
// subtests are not parallel: the clouds' SDKs take the emulators' addresses and
// credentials from the process environment.
func TestConformance(t *testing.T) {
	testenv.RequireSSHD(t)
	srv := sshdtest.Start(t)
	remote := t.TempDir()
	want := writeOutputDir(t, remote)
	log := slog.New(slog.NewTextHandler(tWriter{t}, nil))
	client, err := sshrunner.Dial(testContext(t), srv.Target(), &sshrunner.Options{Logger: log})
	if err != nil {
		t.Fatalf("dial sshd: %v", err)
	}
	t.Cleanup(func() { client.Close() })

	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			s := st.start(t)
			s.Setenv(t)
			ctx := testContext(t)

			w, err := storage.OpenWeights(ctx, s.URL())
			if err != nil {
				t.Fatalf("OpenWeights(%s): %v", s.URL(), err)
			}
			t.Cleanup(func() { w.Close() })
			if strings.ContainsAny(w.BaseURI, "?#") || w.BaseURI != storage.Redact(s.URL()) {
				t.Errorf("BaseURI = %q, want the URL without its query, %q", w.BaseURI, storage.Redact(s.URL()))
			}

			t.Run("ReadWriteList", func(t *testing.T) { testReadWriteList(t, w.Bucket) })
			t.Run("Prefix", func(t *testing.T) { testPrefix(t, s, w.Bucket) })
			t.Run("MissingBucket", func(t *testing.T) { testMissingBucket(t, s) })
			t.Run("DownloadVerify", func(t *testing.T) { testDownloadVerify(t, client, remote, want, w.Bucket) })
		})
	}
}

func testReadWriteList(t *testing.T, b *blob.Bucket) {
	ctx := testContext(t)
	objects := map[string][]byte{
		"rw/model.safetensors":     random(t, 70_000),
		"rw/tokenizer/vocab.json":  []byte(`{"a":1}`),
		"rw/empty":                 nil,
		"rw-sibling/not-listed.sh": []byte("x"),
	}
	for k, v := range objects {
		if err := b.WriteAll(ctx, k, v, &blob.WriterOptions{ContentType: "application/octet-stream"}); err != nil {
			t.Fatalf("write %s: %v", k, err)
		}
	}
	for k, v := range objects {
		got, err := b.ReadAll(ctx, k)
		if err != nil || string(got) != string(v) {
			t.Errorf("read back %s: %d bytes, %v; want %d bytes", k, len(got), err, len(v))
		}
	}
	var keys []string
	it := b.List(&blob.ListOptions{Prefix: "rw/"})
	for {
		o, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		keys = append(keys, o.Key)
	}
	slices.Sort(keys)
	if want := []string{"rw/empty", "rw/model.safetensors", "rw/tokenizer/vocab.json"}; !slices.Equal(keys, want) {
		t.Errorf("list rw/ = %q, want %q", keys, want)
	}
	if _, err := b.ReadAll(ctx, "rw/nope"); gcerrors.Code(err) != gcerrors.NotFound {
		t.Errorf("read of a missing key: %v, want not found", err)
	}
}

// testPrefix opens the store with a path after the bucket: keys land under it, and the
// BaseURI keeps it, so that BaseURI + "/" + key names the object.
func testPrefix(t *testing.T, s emulators.Store, whole *blob.Bucket) {
	ctx := testContext(t)
	u := withPath(t, s.URL(), "/models/prod/")
	w, err := storage.OpenWeights(ctx, u)
	if err != nil {
		t.Fatalf("OpenWeights(%s): %v", u, err)
	}
	defer w.Close()
	if err := w.Bucket.WriteAll(ctx, "ep/v1/a.bin", []byte("abc"), nil); err != nil {
		t.Fatal(err)
	}
	if got, err := whole.ReadAll(ctx, "models/prod/ep/v1/a.bin"); err != nil || string(got) != "abc" {
		t.Errorf("object under the prefix: %q, %v", got, err)
	}
	if want := storage.Redact(withPath(t, s.URL(), "/models/prod")); w.BaseURI != want {
		t.Errorf("BaseURI = %q, want %q", w.BaseURI, want)
	}
}

func testMissingBucket(t *testing.T, s emulators.Store) {
	u := s.BucketURL("understudy-no-such-bucket")
	if _, ok := s.(fileStore); ok {
		// A file:// weights store is created; a plain Open is not.
		_, err := storage.Open(testContext(t), u)
		if job.CodeOf(err) != job.CodeFailedPrecondition {
			t.Errorf("Open of a missing directory: %v, want code %s", err, job.CodeFailedPrecondition)
		}
		return
	}
	_, err := storage.OpenWeights(testContext(t), u)
	if job.CodeOf(err) != job.CodeFailedPrecondition || !strings.Contains(job.MessageOf(err), "does not exist") ||
		!strings.Contains(job.MessageOf(err), storage.Redact(u)) || strings.Contains(job.MessageOf(err), "?") {
		t.Errorf("OpenWeights of a missing bucket: %v (message %q), want %s naming %s, without query", err, job.MessageOf(err), job.CodeFailedPrecondition, storage.Redact(u))
	}
}

func testDownloadVerify(t *testing.T, c *sshrunner.Client, remote string, want sshrunner.Manifest, b *blob.Bucket) {
	ctx := testContext(t)
	const prefix = "ep/v3/job-1"
	expected := map[string]string{}
	for _, f := range want.Files {
		expected[f.Path] = f.SHA256
	}
	// Small chunks over two sessions: the chunks of a file arrive out of order and must
	// still be stored in order.
	got, err := c.Download(ctx, remote, b, prefix, &sshrunner.DownloadOptions{Expected: expected, ChunkSize: 1 << 20, Sessions: 2})
	if err != nil {
		t.Fatalf("Download: %v", err)
	}
	if !slices.Equal(got.Files, want.Files) {
		t.Fatalf("manifest %+v, want %+v", got.Files, want.Files)
	}
	if err := sshrunner.Verify(ctx, b, prefix, got); err != nil {
		t.Fatalf("Verify: %v", err)
	}

	// Corrupted: one byte flipped, same size.
	key := prefix + "/model.safetensors"
	data, err := b.ReadAll(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := b.WriteAll(ctx, key, data, nil); err != nil {
		t.Fatal(err)
	}
	err = sshrunner.Verify(ctx, b, prefix, got)
	if !errors.Is(err, sshrunner.ErrChecksumMismatch) || job.ReasonOf(err) != "checksum_mismatch" || job.CodeOf(err) != job.CodeFailedPrecondition {
		t.Errorf("Verify of a corrupted object: %v, want a checksum mismatch", err)
	}
	// Truncated.
	if err := b.WriteAll(ctx, key, data[:100], nil); err != nil {
		t.Fatal(err)
	}
	if err := sshrunner.Verify(ctx, b, prefix, got); !errors.Is(err, sshrunner.ErrChecksumMismatch) {
		t.Errorf("Verify of a truncated object: %v, want a checksum mismatch", err)
	}
	// Missing.
	if err := b.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if err := sshrunner.Verify(ctx, b, prefix, got); job.CodeOf(err) != job.CodeNotFound {
		t.Errorf("Verify of a missing object: %v, want code %s", err, job.CodeNotFound)
	}
}

func TestRejectsBadURLs(t *testing.T) {
	for _, u := range []string{
		"file://relative/path",
		"s4://bucket",
		"::",
		"bucket/key",
		"s3://",
		"s3://AKIA:secret@bucket",
		"s3://bucket?aws_secret_access_key=x",
		"s3://bucket?X-Amz-Credential=x&X-Amz-Signature=y",
		"s3://bucket?prefix=a/",
		"gs://bucket?private_key_path=/k.pem",
		"gs://bucket?access_token=x",
		"azblob://container?sv=2020-01-01&sig=abc",
		"azblob://container?sas_token=abc",
		"azblob://container?account_key=abc",
	} {
		_, err := storage.OpenWeights(context.Background(), u)
		if job.CodeOf(err) != job.CodeInvalidArgument {
			t.Errorf("%q: %v, want code %s", u, err, job.CodeInvalidArgument)
			continue
		}
		for _, secret := range []string{"AKIA", ":secret", "abc", "=x", "=y"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%q: the error echoes %q: %v", u, secret, err)
			}
		}
	}
}

func TestFileWeightsArePlainFiles(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "weights")
	w, err := storage.OpenWeights(ctx, "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Bucket.WriteAll(ctx, "ep/v1/job/model.safetensors", []byte("abc"), nil); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "ep", "v1", "job", "model.safetensors"))
	if err != nil || string(got) != "abc" {
		t.Fatalf("stored file = %q, %v", got, err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "ep", "v1", "job"))
	if len(entries) != 1 {
		t.Fatalf("want only the object, no sidecars: %v", entries)
	}
	if w.BaseURI != "file://"+dir {
		t.Fatalf("BaseURI = %q", w.BaseURI)
	}
}

func TestSplitObjectURL(t *testing.T) {
	for _, c := range []struct{ in, bucket, key string }{
		{"s3://b/dir/x.jsonl?region=eu-west-1&endpoint=http%3A%2F%2F127.0.0.1%3A9000", "s3://b?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-west-1", "dir/x.jsonl"},
		{"gs://b/x.jsonl", "gs://b", "x.jsonl"},
		{"azblob://c/a/b/x.jsonl?localemu=true", "azblob://c?localemu=true", "a/b/x.jsonl"},
		{"file:///data/sets/x.jsonl", "file:///data/sets?metadata=skip&no_tmp_dir=true", "x.jsonl"},
	} {
		b, k, err := storage.SplitObjectURL(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		bu, _ := url.Parse(b)
		wu, _ := url.Parse(c.bucket)
		if bu.Scheme != wu.Scheme || bu.Host != wu.Host || bu.Path != wu.Path || bu.Query().Encode() != wu.Query().Encode() || k != c.key {
			t.Errorf("SplitObjectURL(%s) = %s, %s; want %s, %s", c.in, b, k, c.bucket, c.key)
		}
	}
	for _, in := range []string{"s3://b", "s3://b/", "gs://b?x=1"} {
		if _, _, err := storage.SplitObjectURL(in); job.CodeOf(err) != job.CodeInvalidArgument {
			t.Errorf("%s names no object but: %v", in, err)
		}
	}
}

// writeOutputDir writes a model-like output directory and returns its manifest.
func writeOutputDir(t *testing.T, dir string) sshrunner.Manifest {
	t.Helper()
	files := map[string][]byte{
		"config.json":          []byte(`{"model_type":"gpt2"}`),
		"empty.txt":            nil,
		"model.safetensors":    random(t, 3<<20+12345), // several chunks, the last one short
		"tokenizer/vocab.json": random(t, 300_000),
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
	slices.SortFunc(m.Files, func(a, b sshrunner.File) int { return strings.Compare(a.Path, b.Path) })
	return m
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// withPath returns rawURL with its path replaced.
func withPath(t *testing.T, rawURL, path string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme == "file" {
		u.Path += path
	} else {
		u.Path = path
	}
	return u.String()
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestUnreachable opens stores whose endpoint refuses connections: the error names the URL
// and says the store cannot be reached, also where the client would retry for ever.
func TestUnreachable(t *testing.T) {
	t.Cleanup(storage.SetAccessTimeout(3 * time.Second))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "x")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "y")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("STORAGE_EMULATOR_HOST", closed)
	t.Setenv("AZURE_STORAGE_ACCOUNT", emulators.AzuriteAccount)
	t.Setenv("AZURE_STORAGE_KEY", emulators.AzuriteKey)
	for _, u := range []string{
		"s3://b?region=us-east-1&use_path_style=true&endpoint=" + url.QueryEscape("http://"+closed),
		"gs://b",
		"azblob://c?protocol=http&localemu=true&domain=" + url.QueryEscape(closed),
	} {
		// No deadline here: only the access check's own bound ends a client that retries.
		_, err := storage.OpenWeights(t.Context(), u)
		if job.CodeOf(err) != job.CodeUnavailable || !strings.HasPrefix(job.MessageOf(err), "storage "+storage.Redact(u)+": the store") {
			t.Errorf("%s: %v (message %q), want code %s", u, err, job.MessageOf(err), job.CodeUnavailable)
		}
	}
}
