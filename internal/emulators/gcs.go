package emulators

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
)

// GCS is a running Google Cloud Storage emulator (fake-gcs-server). Its fields are
// read-only.
type GCS struct {
	// Host is the server's host:port on 127.0.0.1, the value of STORAGE_EMULATOR_HOST.
	Host string
	// Bucket is the bucket created at start.
	Bucket string
}

// StartGCS starts a GCS emulator for t with one empty bucket. It is stopped when t ends.
func StartGCS(t testing.TB) *GCS {
	t.Helper()
	bin := binary(t, "fake-gcs-server")
	port := launch(t, "fake-gcs-server", bin, nil, func(port int, dir string) []string {
		host := fmt.Sprintf("127.0.0.1:%d", port)
		return []string{
			"-scheme", "http", "-host", "127.0.0.1", "-port", fmt.Sprint(port),
			"-backend", "filesystem", "-filesystem-root", dir + "/storage",
			// Upload sessions and media links point back at this server.
			"-external-url", "http://" + host, "-public-host", host,
			"-log-level", "warn",
		}
	}, "/storage/v1/b")
	g := &GCS{Host: fmt.Sprintf("127.0.0.1:%d", port)}
	g.Bucket = g.NewBucket(t)
	return g
}

// NewBucket creates another empty bucket with a unique name and returns its name.
func (g *GCS) NewBucket(t testing.TB) string {
	t.Helper()
	name := uniqueName()
	body, _ := json.Marshal(map[string]string{"name": name})
	req, err := http.NewRequest(http.MethodPost, "http://"+g.Host+"/storage/v1/b?project=understudy-test", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if err := do(req, http.StatusOK); err != nil {
		t.Fatalf("create GCS bucket %s: %v", name, err)
	}
	return name
}

// URL returns the gocloud.dev URL of the bucket created at start. The emulator is found
// through STORAGE_EMULATOR_HOST (Env), not through the URL.
func (g *GCS) URL() string { return g.BucketURL(g.Bucket) }

// BucketURL returns the gocloud.dev URL of a bucket of this emulator.
func (g *GCS) BucketURL(bucket string) string { return g.ObjectURL(bucket, "") }

// ObjectURL returns the URL of one object: BucketURL with the key as its path.
func (g *GCS) ObjectURL(bucket, key string) string {
	u := url.URL{Scheme: "gs", Host: bucket}
	if key != "" {
		u.Path = "/" + key
	}
	return u.String()
}

// Env returns the environment variables a Google Cloud client (this process or a child)
// needs to use the emulator: STORAGE_EMULATOR_HOST, which also makes gocloud.dev skip
// looking for credentials, and a project.
func (g *GCS) Env() []string {
	return []string{
		"STORAGE_EMULATOR_HOST=" + g.Host,
		"GOOGLE_CLOUD_PROJECT=understudy-test",
	}
}

// Setenv sets Env for the rest of t (so t cannot be parallel).
func (g *GCS) Setenv(t testing.TB) { t.Helper(); setenv(t, g.Env()) }
