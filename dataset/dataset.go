// Package dataset reads and checks training data: JSONL with one {"prompt","response"} pair
// or one OpenAI-style {"messages":[…]} record per line. The service checks every line before
// it accepts a job, so a bad dataset is a 4xx at submission, never a failed machine later.
package dataset

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/storage"
)

// Pair is one (prompt, response) training example.
type Pair struct {
	Prompt   string `json:"prompt"`
	Response string `json:"response"`
}

// Message is one turn of a chat record.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// MaxLineBytes bounds one record.
const MaxLineBytes = 8 << 20

// Result describes a checked dataset.
type Result struct {
	Records int
	SHA256  string
	Bytes   int64
}

// Reasons of dataset errors.
const (
	ReasonInvalid  = "invalid_dataset"
	ReasonNotFound = "dataset_not_found"
)

func invalid(format string, args ...any) error {
	return &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: fmt.Sprintf(format, args...)}
}

// CheckLine validates one JSONL record. n is the 1-based line number for messages.
func CheckLine(n int, line []byte) error {
	var rec map[string]json.RawMessage
	if err := json.Unmarshal(line, &rec); err != nil {
		return invalid("dataset line %d is not a JSON object", n)
	}
	if raw, ok := rec["messages"]; ok {
		var msgs []Message
		if err := json.Unmarshal(raw, &msgs); err != nil {
			return invalid("dataset line %d: \"messages\" must be an array of {role, content} strings", n)
		}
		if len(msgs) < 2 {
			return invalid("dataset line %d: \"messages\" needs at least a prompt turn and an assistant turn", n)
		}
		for i, m := range msgs {
			switch m.Role {
			case "system", "user", "assistant", "tool":
			default:
				return invalid("dataset line %d: message %d has unknown role %q", n, i, m.Role)
			}
		}
		last := msgs[len(msgs)-1]
		if last.Role != "assistant" || strings.TrimSpace(last.Content) == "" {
			return invalid("dataset line %d: the last message must be a non-empty assistant turn", n)
		}
		return nil
	}
	for _, field := range []string{"prompt", "response"} {
		raw, ok := rec[field]
		if !ok {
			return invalid("dataset line %d: missing field %q", n, field)
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return invalid("dataset line %d: field %q must be a string", n, field)
		}
		if strings.TrimSpace(s) == "" {
			return invalid("dataset line %d: field %q is empty", n, field)
		}
	}
	return nil
}

// Copy checks every line of r and writes the records, one per line, to w. Blank lines are
// skipped. An empty dataset is an error.
func Copy(ctx context.Context, w io.Writer, r io.Reader) (Result, error) {
	h := sha256.New()
	out := io.MultiWriter(w, h)
	br := bufio.NewReaderSize(r, 1<<20)
	var res Result
	for n := 1; ; n++ {
		if n%4096 == 0 && ctx.Err() != nil {
			return res, ctx.Err()
		}
		line, err := readLine(br)
		if errors.Is(err, errLineTooLong) {
			return res, invalid("dataset line %d is longer than %d bytes", n, MaxLineBytes)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return res, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: "read dataset", Err: err}
		}
		if trimmed := bytes.TrimSpace(line); len(trimmed) > 0 {
			if cerr := CheckLine(n, trimmed); cerr != nil {
				return res, cerr
			}
			if _, werr := out.Write(append(trimmed, '\n')); werr != nil {
				return res, fmt.Errorf("write dataset: %w", werr)
			}
			res.Records++
			res.Bytes += int64(len(trimmed) + 1)
		}
		if errors.Is(err, io.EOF) {
			break
		}
	}
	if res.Records == 0 {
		return res, invalid("the dataset is empty")
	}
	res.SHA256 = hex.EncodeToString(h.Sum(nil))
	return res, nil
}

var errLineTooLong = errors.New("line too long")

func readLine(br *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, isPrefix, err := br.ReadLine()
		buf = append(buf, chunk...)
		if len(buf) > MaxLineBytes {
			return nil, errLineTooLong
		}
		if err != nil {
			return buf, err
		}
		if !isPrefix {
			return buf, nil
		}
	}
}

// WritePairs writes inline pairs as JSONL to w, checking each.
func WritePairs(ctx context.Context, w io.Writer, pairs []json.RawMessage) (Result, error) {
	var buf bytes.Buffer
	for _, p := range pairs {
		buf.Write(bytes.TrimSpace(p))
		buf.WriteByte('\n')
	}
	return Copy(ctx, w, &buf)
}

// OpenURI opens a dataset named by a storage URL: file:///path (or an absolute path) on
// this host, or an object in a bucket, s3://, gs:// or azblob://<bucket>/<key> with the
// driver options of storage.Open in the query and credentials from the environment. A
// missing file or object is reason ReasonNotFound; every other failure is a *job.Error
// whose message names the URL without its query, never the data.
func OpenURI(ctx context.Context, uri string) (io.ReadCloser, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: "dataset_uri is not a valid URL"}
	}
	var path string
	switch {
	case u.Scheme == "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: "dataset_uri: file URLs must name a local path (file:///path)"}
		}
		path = u.Path
	case u.Scheme == "" && filepath.IsAbs(uri):
		path = uri
	case u.Scheme != "" && slices.Contains(storage.Schemes, u.Scheme):
		return openObject(ctx, uri)
	default:
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid,
			Message: fmt.Sprintf("dataset_uri scheme %q is not supported (use file://, s3://, gs:// or azblob://)", u.Scheme)}
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonNotFound, Message: "dataset_uri: no such file: " + path}
	}
	if err != nil {
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: "dataset_uri: cannot read " + path}
	}
	if st, err := f.Stat(); err == nil && st.IsDir() {
		f.Close()
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: "dataset_uri names a directory, not a file: " + path}
	}
	return f, nil
}

// openObject opens a dataset in a bucket and turns the storage layer's codes into the
// dataset's reasons: a client can fix a missing object or denied access (422), not a store
// that does not answer (503, retry).
func openObject(ctx context.Context, uri string) (io.ReadCloser, error) {
	r, err := storage.OpenObject(ctx, uri)
	if err == nil {
		return r, nil
	}
	name := storage.Redact(uri)
	switch job.CodeOf(err) {
	case job.CodeNotFound:
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonNotFound, Message: "dataset_uri: no such object: " + name, Err: err}
	case job.CodeInvalidArgument:
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: "dataset_uri: " + job.MessageOf(err), Err: err}
	case job.CodeFailedPrecondition:
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid,
			Message: "dataset_uri: cannot read " + name + ": access denied to the service's credentials", Err: err}
	case job.CodeCanceled:
		return nil, err
	default:
		return nil, &job.Error{Code: job.CodeUnavailable, Message: "dataset_uri: the store of " + name + " does not answer; try again", Err: err}
	}
}
