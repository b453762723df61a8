package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/understudy-ai/training-service/dashboard"
	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/lifecycle"
	"github.com/understudy-ai/training-service/store"
)

// Service is what the API needs from the service behind it.
type Service interface {
	Submit(ctx context.Context, req lifecycle.StartRequest) (*job.Job, bool, error)
	Get(ctx context.Context, trainID string) (*job.Job, error)
	List(ctx context.Context, p store.JobListParams) ([]*job.Job, string, error)
	Cancel(ctx context.Context, trainID string) (*job.Job, error)
	Complete(ctx context.Context, trainID, token string, exitCode *int) (*job.Job, error)
	Events(ctx context.Context, trainID string) ([]job.Event, error)
	Logs(ctx context.Context, trainID string, after int64, limit int) ([]store.LogLine, error)
	Stacks(ctx context.Context) ([]lifecycle.StackInfo, error)
	Orphans(ctx context.Context) ([]lifecycle.CloudMachine, error)
	CollectOrphans(ctx context.Context) (lifecycle.GCResult, error)
	Ready(ctx context.Context) error
}

// Options configure a Server.
type Options struct {
	// Token is the bearer token every /api/v1 call but the internal completed one needs.
	Token string
	// Providers lists the provider names a start request may ask for.
	Providers []string
	// ProviderStatus says of each provider "ready" or "not configured: <what is missing>";
	// /readyz shows it.
	ProviderStatus map[string]string
	// MaxBodyBytes bounds a request body; 0 means 64 MiB.
	MaxBodyBytes int64
	// PollInterval is how often the log stream looks for news; 0 means 500ms.
	PollInterval time.Duration
	Logger       *slog.Logger
	// MaxPairs bounds the inline training_pairs of one start; 0 means DefaultMaxPairs.
	MaxPairs int
	// SpoolDir is where a start's inline pairs are written while the body is read (they
	// never sit in memory); empty means the system's temp dir.
	SpoolDir string
	// MaxStreams bounds the log streams (server-sent events) open at once; one more is a
	// 429. 0 means DefaultMaxStreams.
	MaxStreams int
	// CompletedReadTimeout bounds reading the internal completed call (its body is a few
	// bytes; the caller holds no API token); 0 means 10s.
	CompletedReadTimeout time.Duration
	// Metrics serves GET /metrics (Prometheus) behind the token; nil when the metrics are
	// served on an address of their own (serve --metrics-listen), where /metrics says so.
	Metrics http.Handler
	// Sessions keeps the dashboard's signed-out sessions: the job store, which replicas
	// share. Nil keeps them in this process's memory (a sign-out is forgotten on restart).
	Sessions SessionStore
}

// Defaults of Options.
const (
	DefaultMaxPairs   = 200_000
	DefaultMaxStreams = 256
)

// Server is the HTTP API.
type Server struct {
	svc            Service
	tokenHash      [32]byte
	sessionKey     []byte
	sessions       SessionStore
	dashboard      *dashboard.Handler
	metrics        http.Handler
	providers      map[string]bool
	providerStatus map[string]string
	maxBody        int64
	maxPairs       int
	spoolDir       string
	streams        chan struct{}
	completedRead  time.Duration
	poll           time.Duration
	log            *slog.Logger
	router         *mux.Router
}

// New returns the API handler.
func New(svc Service, opts Options) *Server {
	s := &Server{
		svc:            svc,
		tokenHash:      sha256.Sum256([]byte(opts.Token)),
		sessionKey:     sessionKey(opts.Token),
		sessions:       opts.Sessions,
		dashboard:      dashboard.New(),
		metrics:        opts.Metrics,
		providers:      map[string]bool{},
		providerStatus: opts.ProviderStatus,
		maxBody:        opts.MaxBodyBytes,
		maxPairs:       opts.MaxPairs,
		spoolDir:       opts.SpoolDir,
		completedRead:  opts.CompletedReadTimeout,
		poll:           opts.PollInterval,
		log:            opts.Logger,
	}
	if s.sessions == nil {
		s.sessions = &memorySessions{revoked: map[string]time.Time{}}
	}
	if s.providerStatus == nil {
		s.providerStatus = map[string]string{} // /readyz shows an object, never null
	}
	if s.maxPairs <= 0 {
		s.maxPairs = DefaultMaxPairs
	}
	if opts.MaxStreams <= 0 {
		opts.MaxStreams = DefaultMaxStreams
	}
	s.streams = make(chan struct{}, opts.MaxStreams)
	if s.completedRead <= 0 {
		s.completedRead = 10 * time.Second
	}
	if s.maxBody <= 0 {
		s.maxBody = 64 << 20
	}
	if s.poll <= 0 {
		s.poll = 500 * time.Millisecond
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for _, p := range opts.Providers {
		s.providers[p] = true
	}
	r := mux.NewRouter()
	var allowed func(*http.Request) []string
	r.HandleFunc("/healthz", s.healthz).Methods(http.MethodGet)
	r.HandleFunc("/readyz", s.readyz).Methods(http.MethodGet)
	r.HandleFunc("/openapi.json", s.openapi).Methods(http.MethodGet)
	// The dashboard's page and assets carry no data: what it shows comes from the API,
	// behind the token or the session that signing in sets.
	r.HandleFunc("/", s.dashboard.Page).Methods(http.MethodGet)
	r.HandleFunc("/jobs/{train_id}", s.dashboard.Page).Methods(http.MethodGet)
	r.HandleFunc("/assets/{file}", func(w http.ResponseWriter, r *http.Request) { s.dashboard.Asset(w, r, mux.Vars(r)["file"]) }).Methods(http.MethodGet)
	r.HandleFunc("/api/v1/session", s.signIn).Methods(http.MethodPost)
	r.HandleFunc("/api/v1/session", s.signOut).Methods(http.MethodDelete)
	// The machine's own signal carries the per-job token, not the API token.
	r.HandleFunc("/api/v1/training/{train_id}/completed", s.completed).Methods(http.MethodPost)
	// Routes sit on one router (not a subrouter) so that a wrong method is a 405, not a 404.
	authed := func(path, method string, h http.HandlerFunc) {
		r.Handle(path, s.authenticate(h)).Methods(method)
	}
	authed("/api/v1/training", http.MethodGet, s.list)
	authed("/api/v1/training/start", http.MethodPost, s.start)
	authed("/api/v1/training/{train_id}/status", http.MethodGet, s.status)
	authed("/api/v1/training/{train_id}/cancel", http.MethodPost, s.cancel)
	authed("/api/v1/training/{train_id}/events", http.MethodGet, s.events)
	authed("/api/v1/training/{train_id}/logs", http.MethodGet, s.logs)
	authed("/api/v1/stacks", http.MethodGet, s.stacks)
	authed("/metrics", http.MethodGet, s.serveMetrics)
	authed("/api/v1/stacks/gc", http.MethodGet, s.orphans)
	authed("/api/v1/stacks/gc", http.MethodPost, s.collect)
	notFound := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, ErrorBody{ErrorDetail{Code: "not_found", Message: "no such endpoint: " + r.URL.Path}})
	})
	notAllowed := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// RFC 9110: a 405 names the methods the resource has.
		w.Header().Set("Allow", strings.Join(allowed(r), ", "))
		writeJSON(w, http.StatusMethodNotAllowed, ErrorBody{ErrorDetail{Code: "method_not_allowed", Message: r.Method + " is not allowed on " + r.URL.Path}})
	})
	r.NotFoundHandler = notFound
	r.MethodNotAllowedHandler = notAllowed
	s.router = r
	allowed = func(req *http.Request) []string {
		var methods []string
		r.Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
			var m mux.RouteMatch
			if !route.Match(req, &m) && m.MatchErr != mux.ErrMethodMismatch {
				return nil
			}
			ms, _ := route.GetMethods()
			methods = append(methods, ms...)
			return nil
		})
		sort.Strings(methods)
		return methods
	}
	return s
}

// Timeouts of the HTTP server that NewHTTPServer returns. There is no write timeout: it
// would cut the log streams, which clear their own read deadline instead.
const (
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout = 10 * time.Second
	// ReadTimeout bounds reading a whole request, body included: a start of the largest
	// body at about 250 KB/s.
	ReadTimeout = 5 * time.Minute
	// IdleTimeout bounds how long a kept-alive connection waits for its next request.
	IdleTimeout = 2 * time.Minute
)

// NewHTTPServer returns the http.Server for h with the service's timeouts; ctx is every
// request's base context.
func NewHTTPServer(ctx context.Context, h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		IdleTimeout:       IdleTimeout,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.Error("handler panicked", "path", r.URL.Path, "panic", v)
			writeJSON(w, http.StatusInternalServerError, ErrorBody{ErrorDetail{Code: "internal", Message: "internal error"}})
		}
	}()
	s.router.ServeHTTP(w, r)
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

// validToken says, in constant time, whether tok is the API token.
func (s *Server) validToken(tok string) bool {
	sum := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(sum[:], s.tokenHash[:]) == 1
}

func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tok, ok := bearer(r); ok {
			if s.validToken(tok) {
				next.ServeHTTP(w, r)
				return
			}
		} else if c, err := r.Cookie(SessionCookie); err == nil {
			live, err := s.validSession(r.Context(), c.Value, time.Now())
			if err != nil {
				s.log.Error("look up dashboard session", "err", err)
				s.writeError(w, r, fail(job.CodeUnavailable, "session_store_unavailable", "the dashboard session could not be checked: the job store does not answer"))
				return
			}
			if !live {
				s.unauthenticated(w, r)
				return
			}
			// The dashboard's session. Only its own pages can add its header, so a page of
			// another site that rides on the cookie cannot change anything.
			if !safeMethod(r.Method) && !fromDashboard(r) {
				writeJSON(w, http.StatusForbidden, ErrorBody{ErrorDetail{Code: "dashboard_header_required",
					Message: "a request authenticated by the dashboard's session cookie must carry " + DashboardHeader + ": " + DashboardHeaderValue + "; API clients send the token as a bearer token"}})
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		s.unauthenticated(w, r)
	})
}

func (s *Server) unauthenticated(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="understudy"`)
	s.writeError(w, r, fail(job.CodeUnauthenticated, "unauthenticated", "a valid bearer token is required (or the dashboard's session: sign in at /)"))
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if err := s.svc.Ready(ctx); err != nil {
		s.log.Warn("not ready", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": ErrorDetail{Code: "not_ready", Message: "the job store does not answer"},
			"providers": s.providerStatus})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "providers": s.providerStatus})
}

func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	if s.metrics == nil {
		s.writeError(w, r, fail(job.CodeNotFound, "metrics_elsewhere", "this service serves its metrics on an address of their own (serve --metrics-listen)"))
		return
	}
	s.metrics.ServeHTTP(w, r)
}

// standbyHop marks a request a standby passed on, so that it is never passed on twice.
const standbyHop = "X-Understudy-Standby-Hop"

// Standby is the whole API of a replica that waits to lead a shared job store (only the
// leader drives jobs). It answers /healthz itself, with the role "standby", so that the
// process is not restarted, and passes every other request on to the leader at the URL
// leaderURL returns, so that any replica serves the API: a load balancer may send requests
// to either, and the readiness it reads is the leader's. With no leader to pass a request
// to (none known, it does not answer, or the request was passed on already), it answers
// 503 with the reason "standby" and Retry-After. The API's document it serves itself.
func Standby(leaderURL func() string, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	type targetKey struct{}
	unavailable := func(w http.ResponseWriter) {
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusServiceUnavailable, ErrorBody{Error: ErrorDetail{Code: "standby",
			Message: "this replica is standing by and cannot reach the replica that leads the job store; try again"}})
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(pr.In.Context().Value(targetKey{}).(*url.URL))
			pr.SetXForwarded()
			pr.Out.Header.Set(standbyHop, "1")
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			log.Warn("pass a request on to the leader", "path", r.URL.Path, "err", err)
			unavailable(w)
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			switch r.URL.Path {
			case "/healthz":
				writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "role": "standby"})
				return
			case "/openapi.json": // the same on every replica
				w.Header().Set("Content-Type", "application/json")
				w.Write(openAPI)
				return
			}
		}
		target, err := url.Parse(leaderURL())
		if err != nil || target.Host == "" || r.Header.Get(standbyHop) != "" {
			unavailable(w)
			return
		}
		proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), targetKey{}, target)))
	})
}
