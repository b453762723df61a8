package emulators

import (
	"fmt"
	"net/http"
	"net/url"
	"testing"
)

// S3 is a running S3-compatible server (moto). Its fields are read-only.
type S3 struct {
	// Endpoint is the server's base URL, http://127.0.0.1:<port>.
	Endpoint string
	// Region is the region every bucket is in.
	Region string
	// Bucket is the bucket created at start.
	Bucket string
	// AccessKeyID and SecretAccessKey are the (test) credentials clients sign with; moto
	// accepts any.
	AccessKeyID, SecretAccessKey string
}

// StartS3 starts an S3 server for t with one empty bucket. It is stopped when t ends.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	bin := binary(t, "moto_server")
	port := launch(t, "moto_server", bin, nil, func(port int, _ string) []string {
		return []string{"-H", "127.0.0.1", "-p", fmt.Sprint(port)}
	}, "/")
	s := &S3{
		Endpoint:        fmt.Sprintf("http://127.0.0.1:%d", port),
		Region:          "us-east-1",
		AccessKeyID:     "understudy-test",
		SecretAccessKey: "understudy-test-secret",
	}
	s.Bucket = s.NewBucket(t)
	return s
}

// NewBucket creates another empty bucket with a unique name and returns its name.
func (s *S3) NewBucket(t testing.TB) string {
	t.Helper()
	name := uniqueName()
	// moto does not check signatures by default: an unsigned path-style PUT creates the
	// bucket (in us-east-1, which needs no location constraint).
	req, err := http.NewRequest(http.MethodPut, s.Endpoint+"/"+name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := do(req, http.StatusOK); err != nil {
		t.Fatalf("create S3 bucket %s: %v", name, err)
	}
	return name
}

// URL returns the gocloud.dev URL of the bucket created at start.
func (s *S3) URL() string { return s.BucketURL(s.Bucket) }

// BucketURL returns the gocloud.dev URL of a bucket of this server: the endpoint, the region
// and path-style addressing (the bucket is not a host name here) as query parameters, the
// credentials in the environment (Env).
func (s *S3) BucketURL(bucket string) string { return s.ObjectURL(bucket, "") }

// ObjectURL returns the URL of one object: BucketURL with the key as its path.
func (s *S3) ObjectURL(bucket, key string) string {
	u := url.URL{Scheme: "s3", Host: bucket, RawQuery: url.Values{
		"endpoint":       {s.Endpoint},
		"region":         {s.Region},
		"use_path_style": {"true"},
	}.Encode()}
	if key != "" {
		u.Path = "/" + key
	}
	return u.String()
}

// Env returns the environment variables an AWS SDK client (this process or a child, such
// as the Pulumi CLI) needs to reach the server: the test credentials and region, and no
// shared config files or instance metadata, so that nothing of this machine's AWS setup
// takes part.
func (s *S3) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretAccessKey,
		"AWS_SESSION_TOKEN=",
		"AWS_REGION=" + s.Region,
		"AWS_DEFAULT_REGION=" + s.Region,
		"AWS_PROFILE=",
		"AWS_CONFIG_FILE=/dev/null",
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null",
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Setenv sets Env for the rest of t (so t cannot be parallel).
func (s *S3) Setenv(t testing.TB) { t.Helper(); setenv(t, s.Env()) }
