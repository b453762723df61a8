package emulators

import "testing"

// Store is what every emulator offers, so that one test can range over a table of them.
type Store interface {
	// URL returns the gocloud.dev URL of the bucket (container) made at start.
	URL() string
	// BucketURL returns the gocloud.dev URL of a bucket of this emulator.
	BucketURL(bucket string) string
	// ObjectURL returns the URL of the object key in bucket: BucketURL with the key as
	// its path (the form a dataset_uri takes).
	ObjectURL(bucket, key string) string
	// NewBucket creates another empty bucket with a unique name and returns the name.
	NewBucket(t testing.TB) string
	// Env returns the NAME=value environment variables a client needs: credentials and
	// how to reach the emulator.
	Env() []string
	// Setenv sets Env for the rest of t; t cannot be parallel.
	Setenv(t testing.TB)
}

var (
	_ Store = (*S3)(nil)
	_ Store = (*GCS)(nil)
	_ Store = (*Azure)(nil)
)
