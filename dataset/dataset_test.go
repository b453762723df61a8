package dataset

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gocloud.dev/blob"

	"github.com/understudy-ai/training-service/internal/emulators"
	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/storage"
)

func TestCopyAccepts(t *testing.T) {
	in := `{"prompt":"a","response":"b"}

{"messages":[{"role":"system","content":"s"},{"role":"user","content":"q"},{"role":"assistant","content":"r"}]}
`
	var out bytes.Buffer
	res, err := Copy(context.Background(), &out, strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if res.Records != 2 || len(res.SHA256) != 64 || strings.Count(out.String(), "\n") != 2 {
		t.Fatalf("res %+v out %q", res, out.String())
	}
}

func TestCopyRejects(t *testing.T) {
	cases := map[string]string{
		"empty":          "",
		"blank only":     "\n\n  \n",
		"not json":       `{"prompt":"a","response":"b"}` + "\nnot json\n",
		"missing field":  `{"prompt":"a"}`,
		"wrong type":     `{"prompt":"a","response":3}`,
		"empty response": `{"prompt":"a","response":"  "}`,
		"array":          `[1,2]`,
		"bad messages":   `{"messages":"x"}`,
		"no assistant":   `{"messages":[{"role":"user","content":"q"},{"role":"user","content":"r"}]}`,
		"bad role":       `{"messages":[{"role":"robot","content":"q"},{"role":"assistant","content":"r"}]}`,
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Copy(context.Background(), &bytes.Buffer{}, strings.NewReader(in))
			if job.CodeOf(err) != job.CodeInvalidArgument || job.ReasonOf(err) != ReasonInvalid {
				t.Fatalf("got %v, want invalid_dataset", err)
			}
		})
	}
	_, err := Copy(context.Background(), &bytes.Buffer{}, strings.NewReader(`{"prompt":"a","response":"b"}`+"\n{\n"))
	if !strings.Contains(job.MessageOf(err), "line 2") {
		t.Fatalf("error does not name the line: %v", err)
	}
}

func TestWritePairs(t *testing.T) {
	pairs := []json.RawMessage{json.RawMessage(`{"prompt":"p","response":"r"}`), json.RawMessage(` {"prompt":"p2","response":"r2"} `)}
	var out bytes.Buffer
	res, err := WritePairs(context.Background(), &out, pairs)
	if err != nil || res.Records != 2 {
		t.Fatalf("%+v %v", res, err)
	}
	if _, err := WritePairs(context.Background(), &out, nil); job.ReasonOf(err) != ReasonInvalid {
		t.Fatalf("no pairs: %v", err)
	}
}

func TestOpenURI(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "d.jsonl")
	os.WriteFile(p, []byte(`{"prompt":"a","response":"b"}`), 0o600)
	opts := &OpenOptions{Roots: []string{dir}}
	for _, uri := range []string{"file://" + p, p} {
		f, err := OpenURI(context.Background(), uri, opts)
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		f.Close()
	}
	if _, err := OpenURI(context.Background(), "file://"+filepath.Join(dir, "missing"), opts); job.ReasonOf(err) != ReasonNotFound {
		t.Fatalf("missing: %v", err)
	}
	if _, err := OpenURI(context.Background(), "file://"+dir, opts); job.ReasonOf(err) != ReasonInvalid {
		t.Fatalf("dir: %v", err)
	}
	if _, err := OpenURI(context.Background(), "ftp://x/y", opts); job.ReasonOf(err) != ReasonInvalid {
		t.Fatalf("scheme: %v", err)
	}
	if _, err := OpenURI(context.Background(), "file://host/x", opts); job.ReasonOf(err) != ReasonInvalid {
		t.Fatalf("remote host: %v", err)
	}
}

// A local dataset is read only from under the configured roots: without roots none is,
// and neither "..", a symbolic link out of a root, nor a path elsewhere gets out.
func TestOpenURIConfinedToRoots(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret.jsonl")
	os.WriteFile(secret, []byte(`{"prompt":"a","response":"b"}`), 0o600)
	os.MkdirAll(filepath.Join(root, "sub"), 0o700)
	good := filepath.Join(root, "sub", "d.jsonl")
	os.WriteFile(good, []byte(`{"prompt":"a","response":"b"}`), 0o600)
	if err := os.Symlink(secret, filepath.Join(root, "abs-link.jsonl")); err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(root, secret)
	if err := os.Symlink(rel, filepath.Join(root, "rel-link.jsonl")); err != nil {
		t.Fatal(err)
	}
	os.Symlink("sub/d.jsonl", filepath.Join(root, "inner-link.jsonl"))
	opts := &OpenOptions{Roots: []string{root}}

	if _, err := OpenURI(ctx, "file://"+good, nil); job.ReasonOf(err) != ReasonNotAllowed || !strings.Contains(job.MessageOf(err), "--dataset-root") {
		t.Errorf("no roots: %v, want %s naming --dataset-root", err, ReasonNotAllowed)
	}
	for name, p := range map[string]string{
		"elsewhere":     secret,
		"dot-dot":       root + "/sub/../../" + filepath.Base(outside) + "/secret.jsonl",
		"absolute link": filepath.Join(root, "abs-link.jsonl"),
		"relative link": filepath.Join(root, "rel-link.jsonl"),
		"etc":           "/etc/passwd",
	} {
		if _, err := OpenURI(ctx, "file://"+p, opts); job.ReasonOf(err) != ReasonNotAllowed {
			t.Errorf("%s (%s): %v, want %s", name, p, err, ReasonNotAllowed)
		}
	}
	for _, p := range []string{good, filepath.Join(root, "inner-link.jsonl"), root + "/sub/./d.jsonl"} {
		f, err := OpenURI(ctx, "file://"+p, opts)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		f.Close()
	}
}

// A FIFO (or any file that is not regular) is refused at once instead of blocking the
// request forever; a file larger than MaxBytes is refused before it is read.
func TestOpenURIRefusesFIFOAndLargeFiles(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	fifo := filepath.Join(root, "fifo.jsonl")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		f, err := OpenURI(ctx, "file://"+fifo, &OpenOptions{Roots: []string{root}})
		if f != nil {
			f.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if job.ReasonOf(err) != ReasonInvalid || !strings.Contains(job.MessageOf(err), "regular file") {
			t.Errorf("fifo: %v, want %s (not a regular file)", err, ReasonInvalid)
		}
	case <-time.After(10 * time.Second):
		// Unblock the open so the test can end.
		if w, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			w.Close()
		}
		t.Fatal("opening a FIFO blocked")
	}
	big := filepath.Join(root, "big.jsonl")
	os.WriteFile(big, bytes.Repeat([]byte(`{"prompt":"a","response":"b"}`+"\n"), 100), 0o600)
	_, err := OpenURI(ctx, "file://"+big, &OpenOptions{Roots: []string{root}, MaxBytes: 1000})
	if job.ReasonOf(err) != ReasonTooLarge || !strings.Contains(job.MessageOf(err), "--max-dataset-bytes") {
		t.Errorf("large file: %v, want %s naming --max-dataset-bytes", err, ReasonTooLarge)
	}
}

// Limits stop a copy at the first byte or record past them; no error quotes the data.
func TestCopyLimited(t *testing.T) {
	ctx := context.Background()
	line := `{"prompt":"a","response":"b"}` + "\n"
	in := strings.Repeat(line, 10)
	if res, err := CopyLimited(ctx, io.Discard, strings.NewReader(in), Limits{MaxBytes: int64(len(in)), MaxRecords: 10}); err != nil || res.Records != 10 {
		t.Fatalf("at the limits: %+v %v", res, err)
	}
	_, err := CopyLimited(ctx, io.Discard, strings.NewReader(in), Limits{MaxBytes: int64(len(in)) - 1})
	if job.ReasonOf(err) != ReasonTooLarge || !strings.Contains(job.MessageOf(err), "--max-dataset-bytes") {
		t.Errorf("bytes: %v", err)
	}
	_, err = CopyLimited(ctx, io.Discard, strings.NewReader(in), Limits{MaxRecords: 9})
	if job.ReasonOf(err) != ReasonTooLarge || !strings.Contains(job.MessageOf(err), "--max-dataset-records") {
		t.Errorf("records: %v", err)
	}
	// An endless source ends at the byte limit.
	_, err = CopyLimited(ctx, io.Discard, endless(line), Limits{MaxBytes: 1 << 20})
	if job.ReasonOf(err) != ReasonTooLarge {
		t.Errorf("endless: %v", err)
	}
	const secret = "SECRET-7f3a"
	for name, bad := range map[string]string{
		"not json":  secret + "\n",
		"bad role":  `{"messages":[{"role":"` + secret + `","content":"q"},{"role":"assistant","content":"r"}]}`,
		"bad field": `{"prompt":"` + secret + `","response":3}`,
		"one field": `{"prompt":"` + secret + `"}`,
	} {
		_, err := Copy(ctx, io.Discard, strings.NewReader(bad))
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("%s: %v quotes the data or passes", name, err)
		}
	}
}

type endlessReader struct {
	line string
	off  int
}

func endless(line string) io.Reader { return &endlessReader{line: line} }

func (e *endlessReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = e.line[e.off]
		e.off = (e.off + 1) % len(e.line)
	}
	return len(p), nil
}

// TestOpenURIObjectStores reads datasets from S3, GCS and Azure Blob Storage emulators, as
// gocloud URLs with the credentials in the environment.
func TestOpenURIObjectStores(t *testing.T) {
	const content = `{"prompt":"a","response":"b"}
{"prompt":"SECRET-CONTENT","response":"d"}
`
	for _, st := range []struct {
		name  string
		start func(t *testing.T) emulators.Store
	}{
		{"s3", func(t *testing.T) emulators.Store { return emulators.StartS3(t) }},
		{"gcs", func(t *testing.T) emulators.Store { return emulators.StartGCS(t) }},
		{"azurite", func(t *testing.T) emulators.Store { return emulators.StartAzurite(t) }},
	} {
		t.Run(st.name, func(t *testing.T) {
			s := st.start(t)
			s.Setenv(t)
			ctx := t.Context()
			bucket := s.NewBucket(t)
			b, err := blob.OpenBucket(ctx, s.BucketURL(bucket))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if err := b.WriteAll(ctx, "sets/d.jsonl", []byte(content), nil); err != nil {
				t.Fatal(err)
			}
			if err := b.WriteAll(ctx, "sets/bad.jsonl", []byte("{\"prompt\":\"SECRET-CONTENT\"}\n"), nil); err != nil {
				t.Fatal(err)
			}

			// The service reads objects only under the prefixes an operator allowed.
			opts := &OpenOptions{Roots: []string{s.BucketURL(bucket), s.BucketURL("understudy-no-such-bucket")}}
			if _, err := OpenURI(ctx, s.ObjectURL(bucket, "sets/d.jsonl"), nil); job.ReasonOf(err) != ReasonNotAllowed ||
				!strings.Contains(job.MessageOf(err), "--dataset-root") {
				t.Errorf("no store roots: %v, want %s naming --dataset-root", err, ReasonNotAllowed)
			}
			other := s.NewBucket(t)
			if _, err := OpenURI(ctx, s.ObjectURL(other, "sets/d.jsonl"), opts); job.ReasonOf(err) != ReasonNotAllowed {
				t.Errorf("another bucket: %v, want %s", err, ReasonNotAllowed)
			}
			prefixed := &OpenOptions{Roots: []string{strings.Replace(s.BucketURL(bucket), bucket, bucket+"/sets", 1)}}
			if r, err := OpenURI(ctx, s.ObjectURL(bucket, "sets/d.jsonl"), prefixed); err != nil {
				t.Errorf("an object under a prefix root: %v", err)
			} else {
				r.Close()
			}
			if _, err := OpenURI(ctx, s.ObjectURL(bucket, "setsx/d.jsonl"), prefixed); job.ReasonOf(err) != ReasonNotAllowed {
				t.Errorf("an object beside the prefix: %v, want %s", err, ReasonNotAllowed)
			}
			// The caller cannot point the service's credentials at another endpoint.
			moved, _ := url.Parse(s.ObjectURL(bucket, "sets/d.jsonl"))
			mq := moved.Query()
			mq.Set("endpoint", "http://198.51.100.9:9000")
			mq.Set("domain", "198.51.100.9:9000")
			moved.RawQuery = mq.Encode()
			if _, err := OpenURI(ctx, moved.String(), opts); job.ReasonOf(err) != ReasonNotAllowed {
				t.Errorf("other store options: %v, want %s", err, ReasonNotAllowed)
			}

			r, err := OpenURI(ctx, s.ObjectURL(bucket, "sets/d.jsonl"), opts)
			if err != nil {
				t.Fatalf("OpenURI: %v", err)
			}
			var out bytes.Buffer
			res, err := Copy(ctx, &out, r)
			r.Close()
			if err != nil || res.Records != 2 || out.String() != content {
				t.Fatalf("Copy: %+v, %v; got %q", res, err, out.String())
			}

			r, err = OpenURI(ctx, s.ObjectURL(bucket, "sets/bad.jsonl"), opts)
			if err != nil {
				t.Fatalf("OpenURI: %v", err)
			}
			_, err = Copy(ctx, &out, r)
			r.Close()
			if job.ReasonOf(err) != ReasonInvalid || strings.Contains(err.Error(), "SECRET") {
				t.Errorf("a bad line: %v, want %s without the line's content", err, ReasonInvalid)
			}

			for what, uri := range map[string]string{
				"missing key":    s.ObjectURL(bucket, "sets/nope.jsonl"),
				"missing bucket": s.ObjectURL("understudy-no-such-bucket", "d.jsonl"),
			} {
				_, err := OpenURI(ctx, uri, opts)
				msg := job.MessageOf(err)
				if job.CodeOf(err) != job.CodeInvalidArgument || job.ReasonOf(err) != ReasonNotFound ||
					strings.Contains(msg, "?") || !strings.Contains(msg, storage.Redact(uri)) {
					t.Errorf("%s: %v (message %q), want %s naming %s", what, err, msg, ReasonNotFound, storage.Redact(uri))
				}
			}

			u, _ := url.Parse(s.ObjectURL(bucket, "sets/d.jsonl"))
			q := u.Query()
			// Not hex: the random bucket names are, and could contain a hex credential.
			q.Set("sig", "SIGNATURE-xyz")
			u.RawQuery = q.Encode()
			_, err = OpenURI(ctx, u.String(), opts)
			if job.ReasonOf(err) != ReasonNotAllowed || strings.Contains(job.MessageOf(err), "SIGNATURE") {
				t.Errorf("a URL with a credential: %v, want %s without it", err, ReasonNotAllowed)
			}
			if _, err := OpenURI(ctx, s.BucketURL(bucket), opts); job.ReasonOf(err) != ReasonInvalid {
				t.Errorf("a bucket, not an object: %v, want %s", err, ReasonInvalid)
			}
		})
	}
}

// The shared definition of a valid record (testdata/dataset/README.md): the runtime tests the
// same files, and both examples shipped in the repository are accepted.
func TestSharedRecordVectors(t *testing.T) {
	for _, tc := range []struct {
		file  string
		valid bool
	}{
		{"../testdata/dataset/valid.jsonl", true},
		{"../testdata/dataset/invalid.jsonl", false},
		{"../examples/sample-pairs.jsonl", true},
		{"../examples/sample-chat.jsonl", true},
	} {
		raw, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
		if len(lines) < 3 {
			t.Fatalf("%s: %d lines", tc.file, len(lines))
		}
		for i, line := range lines {
			err := CheckLine(i+1, []byte(line))
			if tc.valid && err != nil {
				t.Errorf("%s line %d refused: %v", tc.file, i+1, err)
			}
			if !tc.valid && err == nil {
				t.Errorf("%s line %d accepted: %s", tc.file, i+1, line)
			}
		}
	}
}
