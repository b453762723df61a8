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
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/understudy-ai/training-service/internal/fsroot"
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
	// ReasonTooLarge: more bytes or records than the service takes (Limits).
	ReasonTooLarge = "dataset_too_large"
	// ReasonNotAllowed: a local dataset outside the configured roots, or local datasets
	// disabled (no roots).
	ReasonNotAllowed = "dataset_not_allowed"
)

// Limits bound a dataset. Zero fields mean no limit. The messages of the errors they cause
// name the serve flags that set them.
type Limits struct {
	// MaxBytes bounds the bytes read (--max-dataset-bytes).
	MaxBytes int64
	// MaxRecords bounds the records (--max-dataset-records).
	MaxRecords int
}

func invalid(format string, args ...any) error {
	return &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: fmt.Sprintf(format, args...)}
}

// CheckLine validates one JSONL record. n is the 1-based line number for messages. The
// rules are the runtime's too (trainer/understudy_trainer/data.py); both are tested against
// testdata/dataset/.
func CheckLine(n int, line []byte) error {
	var rec map[string]json.RawMessage
	if err := json.Unmarshal(line, &rec); err != nil || rec == nil {
		return invalid("dataset line %d is not a JSON object", n)
	}
	if raw, ok := rec["messages"]; ok {
		return checkMessages(n, raw)
	}
	for _, field := range []string{"prompt", "response"} {
		raw, ok := rec[field]
		if !ok {
			return invalid("dataset line %d: missing field %q", n, field)
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil || string(raw) == "null" {
			return invalid("dataset line %d: field %q must be a string", n, field)
		}
		if strings.TrimSpace(s) == "" {
			return invalid("dataset line %d: field %q is empty", n, field)
		}
	}
	return nil
}

// checkMessages validates a chat record's "messages": {role, content} objects whose content
// is a string or OpenAI text parts, ending on a non-blank assistant turn after a prompt.
func checkMessages(n int, raw json.RawMessage) error {
	var msgs []json.RawMessage
	if err := json.Unmarshal(raw, &msgs); err != nil || len(msgs) == 0 {
		return invalid("dataset line %d: \"messages\" must be a non-empty array of {role, content} objects", n)
	}
	var last Message
	for i, m := range msgs {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(m, &fields); err != nil || fields == nil {
			return invalid("dataset line %d: message %d is not an object", n, i)
		}
		var msg Message
		if err := json.Unmarshal(fields["role"], &msg.Role); err != nil {
			return invalid("dataset line %d: message %d: \"role\" must be a string", n, i)
		}
		switch msg.Role {
		case "system", "user", "assistant", "tool":
		default:
			// The role is the client's data: never echoed.
			return invalid("dataset line %d: message %d has an unknown role (want system, user, assistant or tool)", n, i)
		}
		text, ok := contentText(fields["content"])
		if !ok {
			return invalid("dataset line %d: message %d: \"content\" must be a string or an array of {\"type\": \"text\", \"text\": ...} parts", n, i)
		}
		msg.Content = text
		last = msg
	}
	if len(msgs) < 2 {
		return invalid("dataset line %d: \"messages\" needs at least a prompt turn and an assistant turn", n)
	}
	if last.Role != "assistant" || strings.TrimSpace(last.Content) == "" {
		return invalid("dataset line %d: the last message must be a non-empty assistant turn", n)
	}
	return nil
}

// contentText returns a message's text: a string, or the joined texts of OpenAI content
// parts ([{"type": "text", "text": "..."}]); ok is false for anything else (images, audio).
func contentText(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) > 0 && raw[0] == '"' {
		return s, json.Unmarshal(raw, &s) == nil
	}
	var parts []struct {
		Type string  `json:"type"`
		Text *string `json:"text"`
	}
	if len(raw) == 0 || raw[0] != '[' || json.Unmarshal(raw, &parts) != nil {
		return "", false
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type != "text" || p.Text == nil {
			return "", false
		}
		b.WriteString(*p.Text)
	}
	return b.String(), true
}

// Copy checks every line of r and writes the records, one per line, to w. Blank lines are
// skipped. An empty dataset is an error.
func Copy(ctx context.Context, w io.Writer, r io.Reader) (Result, error) {
	return CopyLimited(ctx, w, r, Limits{})
}

// CopyLimited is Copy within lim: more bytes or records than it allows is reason
// ReasonTooLarge, and reading stops there. No error quotes the data.
func CopyLimited(ctx context.Context, w io.Writer, r io.Reader, lim Limits) (Result, error) {
	h := sha256.New()
	out := io.MultiWriter(w, h)
	cr := &countingReader{r: r}
	if lim.MaxBytes > 0 {
		// One byte past the limit is enough to know the dataset is too large.
		cr.r = io.LimitReader(r, lim.MaxBytes+1)
	}
	br := bufio.NewReaderSize(cr, 1<<20)
	var res Result
	for n := 1; ; n++ {
		if n%4096 == 0 && ctx.Err() != nil {
			return res, ctx.Err()
		}
		line, err := readLine(br)
		if lim.MaxBytes > 0 && cr.n > lim.MaxBytes {
			return res, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonTooLarge,
				Message: fmt.Sprintf("the dataset is larger than %d bytes, the most this service takes (serve --max-dataset-bytes)", lim.MaxBytes)}
		}
		if errors.Is(err, errLineTooLong) {
			return res, invalid("dataset line %d is longer than %d bytes", n, MaxLineBytes)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return res, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: "read dataset", Err: err}
		}
		if trimmed := bytes.TrimSpace(line); len(trimmed) > 0 {
			if lim.MaxRecords > 0 && res.Records >= lim.MaxRecords {
				return res, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonTooLarge,
					Message: fmt.Sprintf("the dataset holds more than %d records, the most this service takes (serve --max-dataset-records)", lim.MaxRecords)}
			}
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

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

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

// OpenOptions say which datasets OpenURI may open.
type OpenOptions struct {
	// Roots are where datasets may come from (serve --dataset-root): directories a local
	// dataset (file:///path or an absolute path) must lie under, and object-store prefixes
	// (s3://bucket/prefix?region=…, gs://bucket, azblob://container/prefix) an object must
	// lie under. No directory disables local datasets, no prefix object-store ones: the
	// service reads them with its own credentials, so a caller may not name any object they
	// can reach. An object is opened with its root's driver options (endpoint, region); a
	// dataset_uri may repeat them but not change them.
	Roots []string
	// MaxBytes refuses a local file larger than this at once; 0: no limit. (CopyLimited
	// bounds what is read from any source.)
	MaxBytes int64
}

// OpenURI opens a dataset named by a storage URL: file:///path (or an absolute path) under
// one of opts.Roots on this host, or an object in a bucket, s3://, gs:// or
// azblob://<bucket>/<key> with the driver options of storage.Open in the query and
// credentials from the environment. A local dataset is opened through os.Root (no ".." or
// symbolic link out of its root), without blocking (a FIFO cannot hang the caller), and
// must be a regular file. A missing file or object is reason ReasonNotFound, a path the
// options do not allow ReasonNotAllowed; every other failure is a *job.Error whose message
// names the URL without its query, never the data. opts may be nil: no local datasets.
func OpenURI(ctx context.Context, uri string, opts *OpenOptions) (io.ReadCloser, error) {
	if opts == nil {
		opts = &OpenOptions{}
	}
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
		_, stores := SplitRoots(opts.Roots)
		open, err := underStoreRoot(u, stores)
		if err != nil {
			return nil, err
		}
		return openObject(ctx, open)
	default:
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid,
			Message: fmt.Sprintf("dataset_uri scheme %q is not supported (use file://, s3://, gs:// or azblob://)", u.Scheme)}
	}
	return openLocal(path, opts)
}

// SplitRoots separates dataset roots into local directories and object-store prefixes.
func SplitRoots(roots []string) (dirs, stores []string) {
	for _, r := range roots {
		u, err := url.Parse(r)
		switch {
		case err == nil && u.Scheme == "file":
			dirs = append(dirs, u.Path)
		case err == nil && u.Scheme != "" && slices.Contains(storage.Schemes, u.Scheme):
			stores = append(stores, r)
		default:
			dirs = append(dirs, r)
		}
	}
	return dirs, stores
}

// CheckStoreRoot validates an object-store dataset root.
func CheckStoreRoot(root string) error {
	u, err := url.Parse(root)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%s: want scheme://bucket[/prefix][?driver options]", storage.Redact(root))
	}
	// Open's checks (no credentials in the URL) apply to a bucket URL.
	_, _, err = storage.SplitObjectURL(strings.TrimRight(root, "/") + "/x")
	return err
}

// underStoreRoot returns the URL to open the object u names with: its bucket and key under
// a root of the same scheme and bucket, with the root's driver options. An object under no
// root, or a URL whose options differ from its root's, is ReasonNotAllowed.
func underStoreRoot(u *url.URL, roots []string) (string, error) {
	name := storage.Redact(u.String())
	notAllowed := func(msg string) error {
		return &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonNotAllowed, Message: "dataset_uri: " + name + " " + msg}
	}
	if len(roots) == 0 {
		return "", notAllowed("names an object store; this service reads datasets from none (an operator allows a bucket prefix with serve --dataset-root s3://bucket/prefix)")
	}
	key := strings.TrimPrefix(u.Path, "/")
	for _, raw := range roots {
		r, err := url.Parse(raw)
		if err != nil || r.Scheme != u.Scheme || r.Host != u.Host {
			continue
		}
		prefix := strings.Trim(r.Path, "/")
		if prefix != "" && !strings.HasPrefix(key, prefix+"/") {
			continue
		}
		if u.RawQuery != "" && !maps.EqualFunc(u.Query(), r.Query(), slices.Equal) {
			return "", notAllowed("sets other store options than the service's for that bucket; leave the query out")
		}
		open := *u
		open.RawQuery = r.RawQuery
		return open.String(), nil
	}
	return "", notAllowed("is not under a bucket prefix this service reads datasets from (serve --dataset-root)")
}

func openLocal(path string, opts *OpenOptions) (io.ReadCloser, error) {
	dirs, _ := SplitRoots(opts.Roots)
	opts = &OpenOptions{Roots: dirs, MaxBytes: opts.MaxBytes}
	if len(opts.Roots) == 0 {
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonNotAllowed,
			Message: "local datasets are disabled on this service: give the data inline or as an object-store URL, or have an operator allow a directory with serve --dataset-root DIR"}
	}
	root, rel, err := fsroot.Open(opts.Roots, path)
	if errors.Is(err, fsroot.ErrOutside) {
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonNotAllowed,
			Message: "dataset_uri: " + path + " is not under a directory this service reads datasets from (serve --dataset-root)"}
	}
	if err != nil {
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: "dataset_uri: cannot read " + path, Err: err}
	}
	defer root.Close()
	// O_NONBLOCK: opening a FIFO without a writer would block forever; it is refused
	// below as not a regular file. (It has no effect on a regular file.)
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonNotFound, Message: "dataset_uri: no such file: " + path}
	case fsroot.Escaped(err):
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonNotAllowed,
			Message: "dataset_uri: " + path + " leads out of the directories this service reads datasets from (serve --dataset-root)"}
	case err != nil:
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: "dataset_uri: cannot read " + path, Err: err}
	}
	st, err := f.Stat()
	switch {
	case err != nil:
		f.Close()
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: "dataset_uri: cannot read " + path, Err: err}
	case st.IsDir():
		f.Close()
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: "dataset_uri names a directory, not a file: " + path}
	case !st.Mode().IsRegular():
		f.Close()
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonInvalid, Message: "dataset_uri does not name a regular file: " + path}
	case opts.MaxBytes > 0 && st.Size() > opts.MaxBytes:
		f.Close()
		return nil, &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonTooLarge,
			Message: fmt.Sprintf("the dataset is larger than %d bytes, the most this service takes (serve --max-dataset-bytes)", opts.MaxBytes)}
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
