package hubcheck

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeHub answers GET /api/models/{id} with the status its table gives the id (404 when
// absent) and counts the questions.
type fakeHub struct {
	srv    *httptest.Server
	status map[string]int
	asked  atomic.Int64
	paths  sync.Map
}

func newFakeHub(t *testing.T, status map[string]int) *fakeHub {
	t.Helper()
	h := &fakeHub{status: status}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.asked.Add(1)
		h.paths.Store(r.URL.Path, true)
		id, ok := strings.CutPrefix(r.URL.Path, "/api/models/")
		code, known := h.status[id]
		switch {
		case !ok || r.Method != http.MethodGet:
			code = http.StatusBadRequest
		case !known:
			code = http.StatusNotFound
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		switch {
		case code == http.StatusOK && strings.HasPrefix(id, "gated/"):
			w.Write([]byte(`{"id":"` + id + `","gated":"manual","siblings":[{"rfilename":"config.json"}]}`))
		case code == http.StatusOK:
			w.Write([]byte(`{"id":"` + id + `","gated":false,"siblings":[{"rfilename":"config.json"}]}`))
		default:
			w.Write([]byte(`{"error":"Repository not found"}`))
		}
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func newChecker(t *testing.T, o Options) *Checker {
	t.Helper()
	c, err := New(&o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestValidID(t *testing.T) {
	t.Parallel()
	for _, id := range []string{"gpt2", "microsoft/DialoGPT-small", "sshleifer/tiny-gpt2", "a", "_x_/y.z",
		"Org_1/model-v1.5", strings.Repeat("a", MaxNameLen) + "/" + strings.Repeat("b", MaxNameLen)} {
		if err := ValidID(id); err != nil {
			t.Errorf("ValidID(%q) = %v, want nil", id, err)
		}
	}
	for _, id := range []string{"", "/", "a/", "/a", "a/b/c", "models/x/y", "a b", "a//b", "a--b", "a..b", "-a", "a-",
		".a", "a.", "org/-a", "a.git", "org/a.git", "~/model", "a@main", "ü", "a\nb", "a:b",
		strings.Repeat("a", MaxNameLen+1), strings.Repeat("a", MaxNameLen+1) + "/b"} {
		err := ValidID(id)
		if !errors.Is(err, ErrInvalidID) {
			t.Errorf("ValidID(%q) = %v, want ErrInvalidID", id, err)
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"": DefaultEndpoint, "https://hf-mirror.com/": "https://hf-mirror.com",
		"http://127.0.0.1:8080/mirror": "http://127.0.0.1:8080/mirror"} {
		if got, err := ParseEndpoint(in); err != nil || got != want {
			t.Errorf("ParseEndpoint(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"huggingface.co", "ftp://huggingface.co", "https://user:pw@huggingface.co",
		"https://huggingface.co?x=1", "https://huggingface.co/#a", "https://"} {
		if _, err := ParseEndpoint(in); err == nil {
			t.Errorf("ParseEndpoint(%q): no error", in)
		}
	}
}

func TestCheckAnswers(t *testing.T) {
	t.Parallel()
	hub := newFakeHub(t, map[string]int{"gpt2": 200, "org/model": 200, "org/private": 401, "org/forbidden": 403, "gated/model": 200,
		"org/busy": 503, "org/limited": 429})
	c := newChecker(t, Options{Endpoint: hub.srv.URL + "/"})
	if c.Endpoint() != hub.srv.URL {
		t.Errorf("endpoint %q, want %q", c.Endpoint(), hub.srv.URL)
	}
	for id, want := range map[string]error{"gpt2": nil, "org/model": nil, "org/missing": ErrNotFound,
		"org/private": ErrNotFound, "org/forbidden": ErrNotFound, "gated/model": ErrNotFound, "org/busy": ErrUnreachable, "org/limited": ErrUnreachable} {
		err := c.Check(context.Background(), id)
		if !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Errorf("Check(%q) = %v, want %v", id, err, want)
			continue
		}
		var he *Error
		if err != nil && (!errors.As(err, &he) || he.Endpoint != hub.srv.URL || he.ID != id || he.Cause == "") {
			t.Errorf("Check(%q): %#v does not name the endpoint, the id and the answer", id, err)
		}
	}
	if _, ok := hub.paths.Load("/api/models/org/model"); !ok {
		t.Error("the Hub was not asked at /api/models/{namespace}/{name}")
	}
}

func TestCheckEndpointWithPath(t *testing.T) {
	t.Parallel()
	var got atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got.Store(r.URL.Path) }))
	t.Cleanup(srv.Close)
	c := newChecker(t, Options{Endpoint: srv.URL + "/mirror/"})
	if err := c.Check(context.Background(), "org/m"); err != nil {
		t.Fatal(err)
	}
	if got.Load() != "/mirror/api/models/org/m" {
		t.Errorf("asked %v, want /mirror/api/models/org/m", got.Load())
	}
}

func TestCheckMalformedAsksNothing(t *testing.T) {
	t.Parallel()
	hub := newFakeHub(t, nil)
	c := newChecker(t, Options{Endpoint: hub.srv.URL})
	for _, id := range []string{"a/b/c", "../x", "bad id"} {
		if err := c.Check(context.Background(), id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Check(%q) = %v, want ErrInvalidID", id, err)
		}
	}
	if n := hub.asked.Load(); n != 0 {
		t.Errorf("the Hub was asked %d times about malformed ids", n)
	}
}

func TestCheckConnectionRefused(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := newChecker(t, Options{Endpoint: "http://" + addr})
	err = c.Check(context.Background(), "gpt2")
	var he *Error
	if !errors.Is(err, ErrUnreachable) || !errors.As(err, &he) || he.Cause != "connection refused" {
		t.Fatalf("Check = %v, want ErrUnreachable, connection refused", err)
	}
}

func TestCheckTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	c := newChecker(t, Options{Endpoint: srv.URL, Timeout: 100 * time.Millisecond})
	err := c.Check(context.Background(), "gpt2")
	var he *Error
	if !errors.Is(err, ErrUnreachable) || !errors.As(err, &he) || !strings.Contains(he.Cause, "no answer within 100ms") {
		t.Fatalf("Check = %v, want ErrUnreachable, no answer within 100ms", err)
	}

	// The caller's own end is the caller's error, and nothing is remembered of it.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	c = newChecker(t, Options{Endpoint: srv.URL, Timeout: time.Minute})
	if err := c.Check(ctx, "gpt2"); !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnreachable) {
		t.Fatalf("Check with a cancelled context = %v, want context.Canceled", err)
	}
	if n := len(c.cache); n != 0 {
		t.Errorf("%d answers remembered after a cancelled check", n)
	}
}

func TestCheckRemembers(t *testing.T) {
	t.Parallel()
	hub := newFakeHub(t, map[string]int{"gpt2": 200, "org/busy": 503})
	now := time.Unix(1_700_000_000, 0)
	c := newChecker(t, Options{Endpoint: hub.srv.URL})
	c.now = func() time.Time { return now }
	check := func(id string, want error, asked int64) {
		t.Helper()
		if err := c.Check(context.Background(), id); !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Fatalf("Check(%q) = %v, want %v", id, err, want)
		}
		if n := hub.asked.Load(); n != asked {
			t.Fatalf("after Check(%q) the Hub was asked %d times, want %d", id, n, asked)
		}
	}
	check("gpt2", nil, 1)
	check("gpt2", nil, 1) // remembered
	check("org/missing", ErrNotFound, 2)
	check("org/missing", ErrNotFound, 2)
	check("org/busy", ErrUnreachable, 3)
	check("org/busy", ErrUnreachable, 3)

	// A network failure is remembered for seconds, a missing model a little longer, a
	// model found for minutes.
	now = now.Add(DefaultFailureTTL + time.Second)
	check("org/busy", ErrUnreachable, 4)
	check("gpt2", nil, 4)
	now = now.Add(DefaultNotFoundTTL)
	check("org/missing", ErrNotFound, 5)
	check("gpt2", nil, 5)
	now = now.Add(DefaultPositiveTTL)
	check("gpt2", nil, 6)

	// A negative TTL remembers nothing.
	off := newChecker(t, Options{Endpoint: hub.srv.URL, FailureTTL: -1})
	for range 2 {
		off.Check(context.Background(), "org/busy")
	}
	if n := hub.asked.Load(); n != 8 {
		t.Errorf("with FailureTTL < 0 the Hub was asked %d times in all, want 8", n)
	}
}

func TestCheckBoundsWhatItRemembers(t *testing.T) {
	t.Parallel()
	hub := newFakeHub(t, nil)
	c := newChecker(t, Options{Endpoint: hub.srv.URL, MaxEntries: 3})
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		c.Check(context.Background(), id)
	}
	if n := len(c.cache); n > 3 {
		t.Errorf("%d answers remembered, want at most 3", n)
	}
}
