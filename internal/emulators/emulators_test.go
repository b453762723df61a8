package emulators_test

import (
	"net"
	"net/url"
	"testing"
	"time"

	"gocloud.dev/blob"
	_ "gocloud.dev/blob/azureblob"
	_ "gocloud.dev/blob/gcsblob"
	_ "gocloud.dev/blob/s3blob"

	"github.com/understudy-ai/training-service/internal/emulators"
)

// TestEmulators starts each emulator, uses its buckets through gocloud.dev with nothing but
// its URLs and environment, and checks that it is gone when its test ends.
func TestEmulators(t *testing.T) {
	for _, st := range []struct {
		name  string
		start func(t *testing.T) (emulators.Store, string)
	}{
		{"s3", func(t *testing.T) (emulators.Store, string) {
			s := emulators.StartS3(t)
			u, _ := url.Parse(s.Endpoint)
			return s, u.Host
		}},
		{"gcs", func(t *testing.T) (emulators.Store, string) { s := emulators.StartGCS(t); return s, s.Host }},
		{"azurite", func(t *testing.T) (emulators.Store, string) { s := emulators.StartAzurite(t); return s, s.Host }},
	} {
		var addr string
		t.Run(st.name, func(t *testing.T) {
			var s emulators.Store
			s, addr = st.start(t)
			s.Setenv(t)
			ctx := t.Context()
			other := s.NewBucket(t)
			for _, u := range []string{s.URL(), s.BucketURL(other)} {
				b, err := blob.OpenBucket(ctx, u)
				if err != nil {
					t.Fatalf("open %s: %v", u, err)
				}
				if err := b.WriteAll(ctx, "k/v", []byte(u), nil); err != nil {
					t.Fatalf("write to %s: %v", u, err)
				}
				got, err := b.ReadAll(ctx, "k/v")
				if err != nil || string(got) != u {
					t.Fatalf("read back from %s: %q, %v", u, got, err)
				}
				b.Close()
			}
			if s.URL() == s.BucketURL(other) {
				t.Errorf("NewBucket returned the first bucket again")
			}
		})
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still listens on %s after its test ended", st.name, addr)
		}
	}
}
