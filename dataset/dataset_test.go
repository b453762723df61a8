package dataset

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
	for _, uri := range []string{"file://" + p, p} {
		f, err := OpenURI(context.Background(), uri)
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		f.Close()
	}
	if _, err := OpenURI(context.Background(), "file://"+filepath.Join(dir, "missing")); job.ReasonOf(err) != ReasonNotFound {
		t.Fatalf("missing: %v", err)
	}
	if _, err := OpenURI(context.Background(), "file://"+dir); job.ReasonOf(err) != ReasonInvalid {
		t.Fatalf("dir: %v", err)
	}
	if _, err := OpenURI(context.Background(), "ftp://x/y"); job.ReasonOf(err) != ReasonInvalid {
		t.Fatalf("scheme: %v", err)
	}
	if _, err := OpenURI(context.Background(), "file://host/x"); job.ReasonOf(err) != ReasonInvalid {
		t.Fatalf("remote host: %v", err)
	}
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

			r, err := OpenURI(ctx, s.ObjectURL(bucket, "sets/d.jsonl"))
			if err != nil {
				t.Fatalf("OpenURI: %v", err)
			}
			var out bytes.Buffer
			res, err := Copy(ctx, &out, r)
			r.Close()
			if err != nil || res.Records != 2 || out.String() != content {
				t.Fatalf("Copy: %+v, %v; got %q", res, err, out.String())
			}

			r, err = OpenURI(ctx, s.ObjectURL(bucket, "sets/bad.jsonl"))
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
				_, err := OpenURI(ctx, uri)
				msg := job.MessageOf(err)
				if job.CodeOf(err) != job.CodeInvalidArgument || job.ReasonOf(err) != ReasonNotFound ||
					strings.Contains(msg, "?") || !strings.Contains(msg, storage.Redact(uri)) {
					t.Errorf("%s: %v (message %q), want %s naming %s", what, err, msg, ReasonNotFound, storage.Redact(uri))
				}
			}

			u, _ := url.Parse(s.ObjectURL(bucket, "sets/d.jsonl"))
			q := u.Query()
			q.Set("sig", "abc")
			u.RawQuery = q.Encode()
			_, err = OpenURI(ctx, u.String())
			if job.ReasonOf(err) != ReasonInvalid || strings.Contains(job.MessageOf(err), "abc") {
				t.Errorf("a URL with a credential: %v, want %s without it", err, ReasonInvalid)
			}
			if _, err := OpenURI(ctx, s.BucketURL(bucket)); job.ReasonOf(err) != ReasonInvalid {
				t.Errorf("a bucket, not an object: %v, want %s", err, ReasonInvalid)
			}
		})
	}
}
