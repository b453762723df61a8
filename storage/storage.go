package storage

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gocloud.dev/blob"
	_ "gocloud.dev/blob/azureblob" // azblob:// buckets
	_ "gocloud.dev/blob/fileblob"  // file:// buckets
	_ "gocloud.dev/blob/gcsblob"   // gs:// buckets
	_ "gocloud.dev/blob/s3blob"    // s3:// buckets
	"gocloud.dev/gcerrors"

	"github.com/understudy-ai/training-service/job"
)

// Schemes are the URL schemes Open accepts.
var Schemes = []string{"file", "s3", "gs", "azblob"}

// Weights is an open weights store.
type Weights struct {
	Bucket *blob.Bucket
	// BaseURI is the store's URL without driver options (no query); a job's weights_uri is
	// BaseURI followed by its prefix.
	BaseURI string
}

// OpenWeights opens the weights store at rawURL (see Open). For file:// it creates the
// directory and keeps objects as plain files (no metadata sidecars), so the weights are
// usable in place.
func OpenWeights(ctx context.Context, rawURL string) (*Weights, error) {
	loc, err := parse(rawURL)
	if err != nil {
		return nil, err
	}
	if loc.u.Scheme == "file" {
		if err := os.MkdirAll(loc.u.Path, 0o755); err != nil {
			return nil, job.Wrap(job.CodeFailedPrecondition, err, "weights store %s: create the directory", loc.base)
		}
	}
	b, err := loc.open(ctx)
	if err != nil {
		return nil, err
	}
	return &Weights{Bucket: b, BaseURI: loc.base}, nil
}

// Close closes the bucket.
func (w *Weights) Close() error { return w.Bucket.Close() }

// Open opens the bucket at rawURL (file://, s3://, gs:// or azblob://; a path after the
// bucket is a key prefix) and checks that it exists and may be listed with the
// credentials of the environment. The caller closes the bucket.
func Open(ctx context.Context, rawURL string) (*blob.Bucket, error) {
	loc, err := parse(rawURL)
	if err != nil {
		return nil, err
	}
	return loc.open(ctx)
}

// SplitObjectURL splits the URL of one object into the URL of its bucket (with the
// object URL's query, which holds the driver's options) and the object's key: for
// s3://b/dir/x.jsonl?region=r that is s3://b?region=r and dir/x.jsonl; for
// file:///dir/x.jsonl, file:///dir and x.jsonl. The URL is checked as Open checks it.
func SplitObjectURL(rawURL string) (bucketURL, key string, err error) {
	loc, err := parse(rawURL)
	if err != nil {
		return "", "", err
	}
	b := *loc.u
	if b.Scheme == "file" {
		b.Path, key = path.Split(b.Path)
		b.Path = strings.TrimSuffix(b.Path, "/")
	} else {
		key = strings.TrimPrefix(b.Path, "/")
		b.Path = ""
	}
	b.RawPath = ""
	if key == "" {
		return "", "", job.Errorf(job.CodeInvalidArgument, "%s does not name an object", loc.base)
	}
	return b.String(), key, nil
}

// OpenObject opens the object a URL names for reading (see SplitObjectURL). It needs read
// access to that object only, not the right to list the bucket. Closing the reader closes
// the bucket. A missing object or bucket fails with code NotFound, denied access with
// FailedPrecondition, a store that does not answer with Unavailable; messages name the URL
// without its query.
func OpenObject(ctx context.Context, rawURL string) (io.ReadCloser, error) {
	bucketURL, key, err := SplitObjectURL(rawURL)
	if err != nil {
		return nil, err
	}
	base := Redact(rawURL)
	b, err := blob.OpenBucket(ctx, bucketURL)
	if err != nil {
		return nil, job.Wrap(job.CodeInvalidArgument, err, "open storage %s", base)
	}
	r, err := b.NewReader(ctx, key, nil)
	if err != nil {
		b.Close()
		if errors.Is(err, fs.ErrNotExist) || gcerrors.Code(err) == gcerrors.NotFound {
			return nil, job.Wrap(job.CodeNotFound, err, "%s: no such object", base)
		}
		return nil, accessError(base, err)
	}
	return &objectReader{Reader: r, bucket: b}, nil
}

type objectReader struct {
	*blob.Reader
	bucket *blob.Bucket
}

func (r *objectReader) Close() error {
	return errors.Join(r.Reader.Close(), r.bucket.Close())
}

// Redact returns rawURL without user info and query, the form errors and logs show.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(a URL that does not parse)"
	}
	u.User = nil
	u.RawQuery = ""
	u.ForceQuery = false
	u.Fragment = ""
	u.RawFragment = ""
	return u.String()
}

// location is a parsed, checked store URL.
type location struct {
	u      *url.URL // what the driver gets
	base   string   // the URL without query: no driver options, no secrets
	prefix string   // key prefix from the path, "" or ending in "/" (object stores only)
}

func parse(rawURL string) (*location, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, job.Errorf(job.CodeInvalidArgument, "storage URL %s does not parse", Redact(rawURL))
	}
	if u.Scheme == "" || !slices.Contains(Schemes, u.Scheme) {
		return nil, job.Errorf(job.CodeInvalidArgument, "storage URL %s: scheme %q is not supported (use %s)",
			Redact(rawURL), u.Scheme, strings.Join(Schemes, "://, ")+"://")
	}
	base := Redact(rawURL)
	if u.User != nil {
		return nil, job.Errorf(job.CodeInvalidArgument, "storage URL %s carries user info: credentials come from the environment, never from the URL", base)
	}
	q := u.Query()
	for name := range q {
		if secretParam(name) {
			return nil, job.Errorf(job.CodeInvalidArgument,
				"storage URL %s: query parameter %q looks like a credential; credentials come from the environment, never from the URL", base, name)
		}
		if name == "prefix" {
			return nil, job.Errorf(job.CodeInvalidArgument, "storage URL %s: give the prefix as the path after the bucket, not as ?prefix=", base)
		}
	}
	if u.Fragment != "" || u.Opaque != "" {
		return nil, job.Errorf(job.CodeInvalidArgument, "storage URL %s: an opaque URL or a fragment is not a bucket", base)
	}
	loc := &location{u: u, base: strings.TrimRight(base, "/")}
	switch u.Scheme {
	case "file":
		if (u.Host != "" && u.Host != "localhost") || !filepath.IsAbs(u.Path) {
			return nil, job.Errorf(job.CodeInvalidArgument, "storage URL %s must name an absolute path (file:///dir)", base)
		}
		if q.Get("metadata") == "" {
			q.Set("metadata", "skip")
		}
		q.Set("no_tmp_dir", "true")
		u.RawQuery = q.Encode()
	default:
		if u.Host == "" {
			return nil, job.Errorf(job.CodeInvalidArgument, "storage URL %s names no bucket (%s://<bucket>/<prefix>)", base, u.Scheme)
		}
		if p := strings.Trim(u.Path, "/"); p != "" {
			loc.prefix = p + "/"
		}
	}
	return loc, nil
}

// secretParam reports whether a query parameter's name looks like a credential: an
// access or account key, a secret, a token, a password, a signature or a SAS (Azure's SAS
// parameters and S3's presigned X-Amz-* among them), or a private key file.
func secretParam(name string) bool {
	n := strings.ToLower(strings.NewReplacer("_", "", "-", "", ".", "").Replace(name))
	switch n {
	case "sig", "sv", "se", "st", "sp", "sr", "ss", "srt", "spr", "si", "skoid", "sktid", "key", "pwd", "pass", "sas":
		return true
	}
	for _, s := range []string{"secret", "token", "password", "passwd", "credential", "signature", "accesskey", "accountkey", "sharedkey", "privatekey", "apikey", "sastoken", "connectionstring"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// open opens the bucket and checks that it answers.
func (l *location) open(ctx context.Context) (*blob.Bucket, error) {
	b, err := blob.OpenBucket(ctx, l.u.String())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, accessError(l.base, err) // fileblob checks the directory at once
	}
	if err != nil {
		return nil, job.Wrap(job.CodeInvalidArgument, err, "open storage %s", l.base)
	}
	if l.prefix != "" {
		b = blob.PrefixedBucket(b, l.prefix)
	}
	// Bounded: some clients retry a refused connection until their context ends.
	cctx, cancel := context.WithTimeout(ctx, accessTimeout)
	defer cancel()
	ok, err := b.IsAccessible(cctx)
	if err == nil && !ok {
		err = errBucketNotFound
	}
	if err != nil {
		b.Close()
		return nil, accessError(l.base, err)
	}
	return b, nil
}

var errBucketNotFound = errors.New("bucket not found")

// accessTimeout bounds the check that a bucket answers; a variable for tests.
var accessTimeout = 30 * time.Second

// accessError says what is wrong with a bucket that Open cannot list.
func accessError(base string, err error) error {
	var netErr *net.OpError
	switch code := gcerrors.Code(err); {
	case errors.Is(err, errBucketNotFound) || errors.Is(err, fs.ErrNotExist) || code == gcerrors.NotFound:
		return job.Wrap(job.CodeFailedPrecondition, err, "storage %s: the bucket does not exist", base)
	case code == gcerrors.PermissionDenied:
		return job.Wrap(job.CodeFailedPrecondition, err, "storage %s: access denied: check the credentials in the environment", base)
	case code == gcerrors.Canceled || errors.Is(err, context.Canceled):
		return job.Wrap(job.CodeCanceled, err, "storage %s: cancelled", base)
	case code == gcerrors.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded):
		return job.Wrap(job.CodeUnavailable, err, "storage %s: the store does not answer", base)
	case code == gcerrors.Internal || code == gcerrors.ResourceExhausted || errors.As(err, &netErr):
		return job.Wrap(job.CodeUnavailable, err, "storage %s: the store cannot be reached", base)
	default:
		return job.Wrap(job.CodeFailedPrecondition, err, "storage %s: cannot list the bucket", base)
	}
}
