// Package storage opens the weights store: a gocloud.dev blob bucket named by URL. Only
// file:// is wired in now (a directory on this host); object stores plug in as further
// gocloud drivers.
package storage

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"gocloud.dev/blob"
	_ "gocloud.dev/blob/fileblob" // file:// buckets

	"github.com/understudy-ai/training-service/job"
)

// Weights is an open weights store.
type Weights struct {
	Bucket *blob.Bucket
	// BaseURI is the store's URL without driver options; a job's weights_uri is BaseURI
	// followed by its prefix.
	BaseURI string
}

// OpenWeights opens the bucket at rawURL. For file:// it creates the directory and keeps
// objects as plain files (no metadata sidecars), so the weights are usable in place.
func OpenWeights(ctx context.Context, rawURL string) (*Weights, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, job.Wrap(job.CodeInvalidArgument, err, "weights store URL %q is not a URL", rawURL)
	}
	base := *u
	base.RawQuery = ""
	switch u.Scheme {
	case "file":
		dir := u.Path
		if (u.Host != "" && u.Host != "localhost") || !filepath.IsAbs(dir) {
			return nil, job.Errorf(job.CodeInvalidArgument, "weights store URL %q must name an absolute path", rawURL)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create weights store: %w", err)
		}
		q := u.Query()
		if q.Get("metadata") == "" {
			q.Set("metadata", "skip")
		}
		q.Set("no_tmp_dir", "true")
		u.RawQuery = q.Encode()
	default:
		return nil, job.Errorf(job.CodeInvalidArgument, "weights store scheme %q is not supported yet (use file://)", u.Scheme)
	}
	b, err := blob.OpenBucket(ctx, u.String())
	if err != nil {
		return nil, fmt.Errorf("open weights store: %w", err)
	}
	return &Weights{Bucket: b, BaseURI: strings.TrimRight(base.String(), "/")}, nil
}

// Close closes the bucket.
func (w *Weights) Close() error { return w.Bucket.Close() }
