package fakecloud

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/understudy-ai/training-service/provider/sshd"
)

// Server is one fake cloud: the provider's API (see Handler) and the machines created
// through it.
type Server struct {
	cfg       Config
	log       *slog.Logger
	machines  string // Dir/machines
	loginUser string
	// keepTerminated is how long Lambda's GET /instances/{id} still shows a terminated
	// instance; tests shorten it.
	keepTerminated time.Duration

	ctx    context.Context // cancelled by Close, to cut short an sshd that is starting
	cancel context.CancelFunc
	wg     sync.WaitGroup // one per machine goroutine

	mu           sync.Mutex
	closing      chan struct{} // closed by Close
	closed       bool
	byID         map[string]*machine
	order        []*machine // creation order, for listings
	keys         []*sshKey  // Lambda's registered SSH keys
	lastLaunch   time.Time  // Lambda: the last accepted launch
	preemptions  int        // machines preempted so far (Faults.PreemptOnce)
	nextIP       uint32     // Lambda: the next loopback address to try
	apiRequests  int        // authenticated API requests, for the rate-limit fault
	stats        stats
	teardownErrs []error
}

type stats struct {
	Requests map[string]int `json:"requests"`
	Statuses map[string]int `json:"statuses"`
	Creates  int            `json:"creates"`
}

// New makes the fake cloud described by cfg. It creates cfg.Dir/machines (owner-only),
// checks that sshd's StrictModes will accept the machines' files there, and removes the
// machines a previous fake left there. It serves nothing by itself: serve Handler, and
// end it with Close.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("validate config: %w", err)
	}
	cfg = cfg.withDefaults()
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("resolve dir: %w", err)
	}
	cfg.Dir = dir
	machines, err := makeMachinesDir(dir)
	if err != nil {
		return nil, err
	}
	u, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("look up login user: %w", err)
	}
	if err := reapStale(machines, cfg.Logger); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:            cfg,
		log:            cfg.Logger.With("provider", string(cfg.Provider)),
		machines:       machines,
		loginUser:      u.Username,
		keepTerminated: terminatedVisibleFor,
		ctx:            ctx,
		cancel:         cancel,
		closing:        make(chan struct{}),
		byID:           map[string]*machine{},
		nextIP:         rand.Uint32N(200 * 254),
		stats:          stats{Requests: map[string]int{}, Statuses: map[string]int{}},
	}, nil
}

// makeMachinesDir makes dir/machines, owner-only, where sshd's StrictModes accepts files.
func makeMachinesDir(dir string) (string, error) {
	machines := filepath.Join(dir, "machines")
	if err := os.MkdirAll(machines, 0o700); err != nil {
		return "", fmt.Errorf("create machines dir: %w", err)
	}
	if err := os.Chmod(machines, 0o700); err != nil {
		return "", fmt.Errorf("restrict machines dir: %w", err)
	}
	if err := sshd.CheckSafePath(machines); err != nil {
		return "", fmt.Errorf("check machines dir: %w", err)
	}
	return machines, nil
}

// reapStale removes the machines a previous fake left in dir when it died without Close:
// a new fake does not know them, so their sshd's and session processes must not outlive it.
func reapStale(dir string, log *slog.Logger) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list machines dir: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	for _, e := range entries {
		machineDir := filepath.Join(dir, e.Name())
		if err := sshd.Remove(ctx, sshd.FilesOf(machineDir), 0, TagName+"="+machineDir); err != nil {
			return fmt.Errorf("remove stale machine %s: %w", e.Name(), err)
		}
		log.Warn("remove stale machine", "machine", e.Name())
	}
	return nil
}

// Dir is the fake's absolute directory.
func (s *Server) Dir() string { return s.cfg.Dir }

// BaseURL is the base URL a client of the provider is configured with, given root, the
// fake's server root such as "http://127.0.0.1:41234": root itself for RunPod (whose client
// adds /v2/... and /graphql) and root + "/api/v1" for Lambda.
func (s *Server) BaseURL(root string) string {
	root = strings.TrimSuffix(root, "/")
	if s.cfg.Provider == Lambda {
		return root + "/api/v1"
	}
	return root
}

// Handler serves the provider's API and the fake's introspection under /_fake/.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_fake/machines", s.listFakeMachines)
	mux.HandleFunc("GET /_fake/stats", s.getFakeStats)
	if s.cfg.Provider == Lambda {
		s.routeLambda(mux)
	} else {
		s.routeRunPod(mux)
	}
	return mux
}

// Close terminates every machine — stops its sshd, ends the processes of its sessions and
// removes its directory — and waits for that until ctx ends. The caller stops serving the
// Handler first.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
	s.mu.Unlock()
	s.cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("wait for machines to end: %w", ctx.Err())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.teardownErrs...)
}

// api wraps a handler of the provider's API: it counts the request, then answers 401 for a
// bad key (or under the auth fault) and 429 under the rate-limit fault before h runs.
func (s *Server) api(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		defer func() { s.count(r, rec.status) }()
		if s.cfg.Faults.Auth || !s.authorized(r) {
			s.log.InfoContext(r.Context(), "refuse request", "method", r.Method, "path", r.URL.Path, "status", http.StatusUnauthorized)
			s.unauthorized(rec, r)
			return
		}
		if s.rateLimited() {
			rec.Header().Set("Retry-After", "1")
			s.log.InfoContext(r.Context(), "refuse request", "method", r.Method, "path", r.URL.Path, "status", http.StatusTooManyRequests)
			s.tooManyRequests(rec, r)
			return
		}
		r.Body = http.MaxBytesReader(rec, r.Body, 1<<20)
		h(rec, r)
		s.log.DebugContext(r.Context(), "answer request", "method", r.Method, "path", r.URL.Path, "status", rec.status)
	}
}

func (s *Server) count(r *http.Request, status int) {
	pattern := r.Pattern
	if pattern == "" || pattern == "/" {
		pattern = r.Method + " (unmatched)"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Requests[pattern]++
	s.stats.Statuses[strconv.Itoa(status)]++
}

// rateLimited counts one authenticated request and reports whether the rate-limit fault
// refuses it: every second one is.
func (s *Server) rateLimited() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apiRequests++
	return s.cfg.Faults.RateLimit && s.apiRequests%2 == 0
}

// authorized checks the request's key: a bearer token, or for Lambda also HTTP Basic with
// the key as user name (base64 "key:", or the bare key as Lambda's spec also allows).
func (s *Server) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	scheme, cred, _ := strings.Cut(h, " ")
	cred = strings.TrimSpace(cred)
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		return s.keyMatches(cred)
	case strings.EqualFold(scheme, "Basic") && s.cfg.Provider == Lambda:
		if user, pass, ok := r.BasicAuth(); ok {
			return pass == "" && s.keyMatches(user)
		}
		return s.keyMatches(cred)
	}
	return false
}

func (s *Server) keyMatches(key string) bool {
	return subtle.ConstantTimeCompare([]byte(key), []byte(s.cfg.APIKey)) == 1
}

func (s *Server) unauthorized(w http.ResponseWriter, r *http.Request) {
	switch {
	case s.cfg.Provider == Lambda:
		writeLambdaError(w, http.StatusUnauthorized, lambdaErr{
			Code: "global/invalid-api-key", Message: "API key is invalid, expired, or deleted.",
			Suggestion: "Create a new API key and try again.",
		}, nil)
	case r.URL.Path == "/graphql":
		writeGraphQLError(w, http.StatusUnauthorized, "Unauthorized")
	default:
		writeProblem(w, http.StatusUnauthorized, "invalid or expired bearer token", nil)
	}
}

func (s *Server) tooManyRequests(w http.ResponseWriter, r *http.Request) {
	switch {
	case s.cfg.Provider == Lambda:
		writeLambdaError(w, http.StatusTooManyRequests, lambdaErr{Code: "global/unknown", Message: "Too many requests"}, nil)
	case r.URL.Path == "/graphql":
		writeGraphQLError(w, http.StatusTooManyRequests, "Too Many Requests")
	default:
		writeProblem(w, http.StatusTooManyRequests, "rate limit exceeded for the minute window", nil)
	}
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

// fakeMachine is one entry of GET /_fake/machines.
type fakeMachine struct {
	ID              string   `json:"id"`
	Name            string   `json:"name"`
	Status          string   `json:"status"`
	Interruptible   bool     `json:"interruptible"`
	SSHHost         string   `json:"ssh_host"`
	SSHPort         int      `json:"ssh_port"`
	SSHDPID         int      `json:"sshd_pid"`
	HostKeyInjected bool     `json:"host_key_injected"`
	AuthorizedKeys  []string `json:"authorized_keys"`
	LeaseFile       string   `json:"lease_file"`
	LeaseSeconds    int64    `json:"lease_seconds"`
	Deadline        int64    `json:"deadline"`
	StoppedReason   string   `json:"stopped_reason"`
	Dir             string   `json:"dir"`
}

type fakeKey struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// listFakeMachines lists every machine that still exists at the provider (stopped ones
// included) and every registered SSH key.
func (s *Server) listFakeMachines(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	out := struct {
		Machines []fakeMachine `json:"machines"`
		SSHKeys  []fakeKey     `json:"ssh_keys"`
	}{Machines: []fakeMachine{}, SSHKeys: []fakeKey{}}
	for _, m := range s.order {
		if !m.goneAt.IsZero() {
			continue
		}
		out.Machines = append(out.Machines, s.fakeView(m))
	}
	for _, k := range s.keys {
		out.SSHKeys = append(out.SSHKeys, fakeKey{ID: k.ID, Name: k.Name})
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) fakeView(m *machine) fakeMachine {
	v := fakeMachine{
		ID: m.id, Name: m.name, Interruptible: m.interruptible,
		SSHHost: m.listen, HostKeyInjected: m.hostKey != "",
		AuthorizedKeys: slices.Clone(m.authorized), LeaseFile: m.lease.File,
		LeaseSeconds: m.lease.Seconds, Deadline: m.lease.Deadline,
		StoppedReason: m.stoppedReason, Dir: m.dir,
	}
	if v.AuthorizedKeys == nil {
		v.AuthorizedKeys = []string{}
	}
	if m.sshdUp {
		v.SSHPort, v.SSHDPID = m.port, m.pid
	}
	if s.cfg.Provider == Lambda {
		v.SSHPort = s.cfg.SSHPort
		v.Status = lambdaStatus(m)
	} else {
		v.Status = s.podStatus(m, time.Now())
	}
	return v
}

func (s *Server) getFakeStats(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	out := stats{Requests: maps.Clone(s.stats.Requests), Statuses: maps.Clone(s.stats.Statuses), Creates: s.stats.Creates}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}
