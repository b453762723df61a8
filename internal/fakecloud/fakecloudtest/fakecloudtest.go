// Package fakecloudtest serves a fake cloud (package fakecloud) in the test's own process,
// for the tests of the cloud clients and of the provider's resources.
package fakecloudtest

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/fakecloud"
	"github.com/understudy-ai/training-service/internal/testenv"
)

// Fake is a fake cloud served over HTTP on loopback.
type Fake struct {
	t       testing.TB
	Root    string // the server's root, where /_fake/ lives
	URL     string // the base URL clients are configured with
	SSHPort int    // Lambda: every instance's sshd port
}

// Start serves a fake cloud configured by cfg until the test ends, when every machine it
// made is torn down. It fills in what cfg leaves empty: a directory sshd accepts, a short
// boot delay and, for Lambda, a short launch interval and a free SSH port. wrap, when not
// nil, wraps the fake's handler (to break part of the API on purpose).
func Start(t testing.TB, cfg fakecloud.Config, wrap func(http.Handler) http.Handler) *Fake {
	t.Helper()
	testenv.RequireSSHD(t)
	if cfg.Dir == "" {
		cfg.Dir = testenv.SSHDDir(t, "fakecloud-")
	}
	if cfg.BootDelay == 0 {
		cfg.BootDelay = 200 * time.Millisecond
	}
	if cfg.Provider == fakecloud.Lambda {
		if cfg.LaunchInterval == 0 {
			cfg.LaunchInterval = 10 * time.Millisecond
		}
		if cfg.SSHPort == 0 {
			cfg.SSHPort = freePort(t)
		}
	}
	var srv *fakecloud.Server
	t.Cleanup(func() {
		if srv == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("close fake: %v", err)
		}
	})
	var err error
	if srv, err = fakecloud.New(cfg); err != nil {
		t.Fatalf("start fake: %v", err)
	}
	h := srv.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return &Fake{t: t, Root: ts.URL, URL: srv.BaseURL(ts.URL), SSHPort: cfg.SSHPort}
}

// Get decodes the JSON the fake answers at path (such as /_fake/machines) into out.
func (f *Fake) Get(path string, out any) {
	f.t.Helper()
	resp, err := http.Get(f.Root + path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		f.t.Fatalf("decode %s: %v", path, err)
	}
}

// freePort returns a TCP port that is free on loopback now.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
