package dataset

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/understudy-ai/training-service/job"
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
		f, err := OpenURI(uri)
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		f.Close()
	}
	if _, err := OpenURI("file://" + filepath.Join(dir, "missing")); job.ReasonOf(err) != ReasonNotFound {
		t.Fatalf("missing: %v", err)
	}
	if _, err := OpenURI("file://" + dir); job.ReasonOf(err) != ReasonInvalid {
		t.Fatalf("dir: %v", err)
	}
	if _, err := OpenURI("ftp://x/y"); job.ReasonOf(err) != ReasonInvalid {
		t.Fatalf("scheme: %v", err)
	}
	if _, err := OpenURI("file://host/x"); job.ReasonOf(err) != ReasonInvalid {
		t.Fatalf("remote host: %v", err)
	}
}
