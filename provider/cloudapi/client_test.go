package cloudapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func fastRetry() RetryPolicy {
	return RetryPolicy{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond, Deadline: 3 * time.Second}
}

func decodeTest(status int, body []byte) *Error {
	var b struct{ Detail string }
	json.Unmarshal(body, &b)
	return &Error{Message: b.Detail}
}

func TestRetriesRateLimitHonouringRetryAfter(t *testing.T) {
	var n atomic.Int32
	var times []time.Time
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		times = append(times, time.Now())
		mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer k" {
			t.Errorf("authorization %q", r.Header.Get("Authorization"))
		}
		if n.Add(1) == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.Write([]byte(`{"ok":true}`))
	}))
	defer srv.Close()
	c := &Client{Provider: "test", BaseURL: srv.URL, Token: "k", Decode: decodeTest, Retry: fastRetry()}
	var out struct{ OK bool }
	// A create (not idempotent) is retried after a 429: the server did not act on it.
	if _, err := c.Do(context.Background(), Request{Method: "POST", Path: "/x", Body: map[string]int{"a": 1}, Op: "create"}, &out); err != nil || !out.OK {
		t.Fatalf("Do: %v %+v", err, out)
	}
	if n.Load() != 2 {
		t.Fatalf("%d requests, want 2", n.Load())
	}
	if gap := times[1].Sub(times[0]); gap < 900*time.Millisecond {
		t.Errorf("retried after %v, want the server's Retry-After of 1s", gap)
	}
}

func TestServerErrorOnCreateIsAmbiguousAndNotRetried(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte(`{"detail":"boom"}`))
	}))
	defer srv.Close()
	c := &Client{Provider: "test", BaseURL: srv.URL, Decode: decodeTest, Retry: fastRetry()}
	_, err := c.Do(context.Background(), Request{Method: "POST", Path: "/x", Op: "create"}, nil)
	var e *Error
	if !errors.As(err, &e) || !e.Ambiguous || e.Status != 500 || e.Reason != ReasonUnavailable {
		t.Fatalf("err = %#v", err)
	}
	if n.Load() != 1 {
		t.Fatalf("a create was sent %d times after a 500; the caller must look before retrying", n.Load())
	}
	// An idempotent request is retried until the deadline, then gives up.
	n.Store(0)
	c.Retry.Deadline = 300 * time.Millisecond
	_, err = c.Do(context.Background(), Request{Method: "GET", Path: "/x", Op: "get", Idempotent: true}, nil)
	if !errors.As(err, &e) || n.Load() < 2 || !strings.Contains(err.Error(), "gave up after") {
		t.Fatalf("idempotent: %d attempts, %v", n.Load(), err)
	}
}

func TestErrorsCarryReasonAndMarkerButNotTheKey(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"detail":"bad key"}`))
	}))
	defer srv.Close()
	c := &Client{Provider: "test", BaseURL: srv.URL, Token: "sekrit-token", Decode: decodeTest, Retry: fastRetry()}
	_, err := c.Do(context.Background(), Request{Method: "GET", Path: "/x", Op: "list", Idempotent: true}, nil)
	if ReasonOf(err) != ReasonAuth || strings.Contains(err.Error(), "sekrit") {
		t.Fatalf("err = %v", err)
	}
	r, cleaned := ParseMarker("update failed: " + err.Error())
	if r != ReasonAuth || strings.Contains(cleaned, "[understudy:") || !strings.Contains(cleaned, "bad key") {
		t.Fatalf("ParseMarker = %q, %q", r, cleaned)
	}
	if ReasonOf(errors.New("text only "+Marker(ReasonNoCapacity))) != ReasonNoCapacity {
		t.Error("a marker in plain text is not found")
	}
}

func TestNotFoundOK(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(404) }))
	defer srv.Close()
	c := &Client{Provider: "test", BaseURL: srv.URL, Retry: fastRetry()}
	if _, err := c.Do(context.Background(), Request{Method: "DELETE", Path: "/x", NotFoundOK: true}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Do(context.Background(), Request{Method: "GET", Path: "/x"}, nil); !IsNotFound(err) {
		t.Fatalf("GET 404: %v", err)
	}
}

func TestRetryAfterDate(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	if d := parseRetryAfter(now.Add(3*time.Second).Format(http.TimeFormat), now); d != 3*time.Second {
		t.Errorf("date: %v", d)
	}
	if d := parseRetryAfter("7", now); d != 7*time.Second {
		t.Errorf("seconds: %v", d)
	}
	if d := parseRetryAfter("soon", now); d != 0 {
		t.Errorf("junk: %v", d)
	}
}

// Two limiters on one file (two provider processes) space their requests together.
func TestFileIntervalAcrossLimiters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rate")
	a := &FileInterval{Path: path, Every: 300 * time.Millisecond}
	b := &FileInterval{Path: path, Every: 300 * time.Millisecond}
	start := time.Now()
	for _, l := range []*FileInterval{a, b, a} {
		if err := l.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 550*time.Millisecond {
		t.Fatalf("three requests in %v, want at least two intervals", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := b.Wait(ctx); err == nil {
		t.Fatal("Wait ignored its context")
	}
}

func TestSecret(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("TESTCLOUD_API_KEY", "")
	t.Setenv("TESTCLOUD_API_KEY_FILE", "")
	if _, err := Secret("TESTCLOUD_API_KEY"); !errors.Is(err, ErrNotSet) {
		t.Fatalf("unset: %v", err)
	}
	f := filepath.Join(dir, "key")
	os.WriteFile(f, []byte(" from-file \n"), 0o600)
	t.Setenv("TESTCLOUD_API_KEY_FILE", f)
	if v, err := Secret("TESTCLOUD_API_KEY"); err != nil || v != "from-file" {
		t.Fatalf("file: %q %v", v, err)
	}
	os.Chmod(f, 0o604)
	if _, err := Secret("TESTCLOUD_API_KEY"); err == nil || !strings.Contains(err.Error(), f) {
		t.Fatalf("world-readable file: %v", err)
	}
	t.Setenv("TESTCLOUD_API_KEY", "from-env")
	if v, _ := Secret("TESTCLOUD_API_KEY"); v != "from-env" {
		t.Fatalf("env not preferred: %q", v)
	}
}
