package hubcheck

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultEndpoint is the Hub the runtime downloads from when HF_ENDPOINT is not set.
const DefaultEndpoint = "https://huggingface.co"

// Defaults of Options.
const (
	DefaultTimeout     = 5 * time.Second
	DefaultPositiveTTL = 10 * time.Minute
	DefaultNotFoundTTL = 30 * time.Second
	DefaultFailureTTL  = 5 * time.Second
	DefaultMaxEntries  = 4096
)

// MaxNameLen is the longest name, and namespace, a Hub repository id may have.
const MaxNameLen = 96

// maxDocument bounds how much of a model's document is read.
const maxDocument = 4 << 20

// The kinds of a failed check; an *Error is errors.Is one of them.
var (
	// ErrInvalidID: the id cannot name a Hub repository; nothing was asked.
	ErrInvalidID = errors.New("not a valid Hub model id")
	// ErrNotFound: the Hub answered that it has no such model, or none it lets anyone
	// download without a token (a private model answers 401, like a missing one; a gated
	// model's document says it is gated).
	ErrNotFound = errors.New("no such model on the Hub")
	// ErrUnreachable: the Hub could not be asked (no route, no name, refused, timed out, a
	// TLS failure) or did not answer usefully (5xx, 429).
	ErrUnreachable = errors.New("hub unreachable")
)

// Error is a failed check. Cause is short and safe to show to a client ("connection
// refused", "it answered HTTP 404"); Err, when set, holds the internal detail.
type Error struct {
	Kind     error
	ID       string
	Endpoint string
	Cause    string
	Err      error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("check model %q at %s: %v", e.ID, e.Endpoint, e.Kind)
	if e.Cause != "" {
		s += " (" + e.Cause + ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is reports whether target is the error's kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

func (e *Error) Unwrap() error { return e.Err }

// Options configure a Checker; a nil *Options takes every default.
type Options struct {
	// Endpoint is the Hub's base URL, as HF_ENDPOINT gives it to the runtime; empty means
	// DefaultEndpoint. A trailing slash is dropped.
	Endpoint string
	// Timeout bounds one question to the Hub; 0 means DefaultTimeout.
	Timeout time.Duration
	// Client makes the requests; nil means a client of its own that follows the
	// environment's proxy settings.
	Client *http.Client
	// PositiveTTL is how long a model found is remembered, NotFoundTTL a model missing,
	// FailureTTL a Hub unreachable (short: a network failure passes). 0 takes the default,
	// a negative value remembers nothing.
	PositiveTTL, NotFoundTTL, FailureTTL time.Duration
	// MaxEntries bounds the remembered answers; 0 means DefaultMaxEntries.
	MaxEntries int
}

// Checker asks one Hub about model ids, remembering its answers for a while. It is safe for
// concurrent use.
type Checker struct {
	endpoint string
	timeout  time.Duration
	client   *http.Client
	ttl      map[error]time.Duration // by kind; nil is a model found
	max      int
	now      func() time.Time

	mu    sync.Mutex
	cache map[string]entry
}

type entry struct {
	err     error
	expires time.Time
}

// New returns a Checker of the Hub at opts.Endpoint, which must be an http or https URL
// without credentials, query or fragment.
func New(opts *Options) (*Checker, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	endpoint, err := ParseEndpoint(o.Endpoint)
	if err != nil {
		return nil, err
	}
	c := &Checker{endpoint: endpoint, timeout: o.Timeout, client: o.Client, max: o.MaxEntries,
		now: time.Now, cache: map[string]entry{}}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.client == nil {
		c.client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if c.max <= 0 {
		c.max = DefaultMaxEntries
	}
	ttl := func(d, def time.Duration) time.Duration {
		if d == 0 {
			return def
		}
		return d
	}
	c.ttl = map[error]time.Duration{
		nil:            ttl(o.PositiveTTL, DefaultPositiveTTL),
		ErrNotFound:    ttl(o.NotFoundTTL, DefaultNotFoundTTL),
		ErrUnreachable: ttl(o.FailureTTL, DefaultFailureTTL),
	}
	return c, nil
}

// ParseEndpoint checks a Hub endpoint and returns it without a trailing slash; empty means
// DefaultEndpoint.
func ParseEndpoint(s string) (string, error) {
	if s == "" {
		return DefaultEndpoint, nil
	}
	s = strings.TrimRight(s, "/")
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("hub endpoint %q: want an http or https URL without credentials, query or fragment", s)
	}
	return s, nil
}

// Endpoint is the Hub this Checker asks.
func (c *Checker) Endpoint() string { return c.endpoint }

// ValidID returns an error that is ErrInvalidID unless id has the shape of a Hub repository
// id: "name" or "namespace/name", each part of letters, digits, '-', '_' and '.', beginning
// and ending with a letter, digit or '_', at most MaxNameLen long, without "--" or "..", and
// the name not ending in ".git".
func ValidID(id string) error {
	bad := func(why string) error {
		return &Error{Kind: ErrInvalidID, ID: id, Cause: why}
	}
	parts := strings.Split(id, "/")
	if len(parts) > 2 {
		return bad("more than one '/'")
	}
	for _, p := range parts {
		for _, r := range p {
			if r >= 0x80 || !edge(byte(r)) && r != '-' && r != '.' {
				return bad(fmt.Sprintf("the character %q", r))
			}
		}
		switch {
		case p == "":
			return bad("an empty part")
		case len(p) > MaxNameLen:
			return bad(fmt.Sprintf("a part longer than %d characters", MaxNameLen))
		case strings.Contains(p, "--") || strings.Contains(p, ".."):
			return bad("'--' or '..'")
		case !edge(p[0]) || !edge(p[len(p)-1]):
			return bad("a part that begins or ends with '-' or '.'")
		}
	}
	if strings.HasSuffix(id, ".git") {
		return bad("a name ending in .git")
	}
	return nil
}

// edge reports whether b may begin or end a part of an id.
func edge(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_'
}

// Check returns nil when the Hub has a model id that is not gated. Otherwise its
// error is an *Error of kind ErrInvalidID (asked nothing), ErrNotFound or ErrUnreachable,
// or, when ctx ends first, ctx's error (not remembered). It asks the Hub
// (GET {endpoint}/api/models/{id}, as huggingface_hub's model_info does) at most once per
// the TTL of the last answer.
func (c *Checker) Check(ctx context.Context, id string) error {
	if err := ValidID(id); err != nil {
		return err
	}
	now := c.now()
	c.mu.Lock()
	e, ok := c.cache[id]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.err
	}
	err := c.ask(ctx, id)
	if ctx.Err() != nil {
		return err
	}
	var kind error
	var he *Error
	if errors.As(err, &he) {
		kind = he.Kind
	}
	if ttl := c.ttl[kind]; ttl > 0 {
		c.remember(id, entry{err: err, expires: c.now().Add(ttl)})
	}
	return err
}

func (c *Checker) remember(id string, e entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.cache[id]; !ok && len(c.cache) >= c.max {
		now := c.now()
		for k, old := range c.cache {
			if !now.Before(old.expires) {
				delete(c.cache, k)
			}
		}
		// Still full: ids come from clients, so memory is bounded before answers are kept.
		for k := range c.cache {
			if len(c.cache) < c.max {
				break
			}
			delete(c.cache, k)
		}
	}
	c.cache[id] = e
}

// ask puts the question to the Hub; ctx's own end is returned as ctx's error.
func (c *Checker) ask(ctx context.Context, id string) error {
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, c.endpoint+"/api/models/"+id, nil)
	if err != nil {
		return c.fail(ErrUnreachable, id, "a request that cannot be made", err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "understudy-train")
	resp, err := c.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return c.fail(ErrUnreachable, id, c.cause(err), err)
	}
	defer resp.Body.Close()
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		// Of the model's document only "gated" matters (false, or "auto" or "manual": a
		// download needs a token, which the machines are not given). A document that does
		// not decode (a mirror's own) is taken as found.
		var doc struct {
			Gated any `json:"gated"`
		}
		if json.NewDecoder(io.LimitReader(resp.Body, maxDocument)).Decode(&doc) == nil {
			if g, _ := doc.Gated.(string); g != "" || doc.Gated == true {
				return c.fail(ErrNotFound, id, "it is gated: a download needs a token", nil)
			}
		}
		return nil
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		return c.fail(ErrUnreachable, id, fmt.Sprintf("it answered HTTP %d", code), nil)
	case code >= 400:
		return c.fail(ErrNotFound, id, fmt.Sprintf("it answered HTTP %d", code), nil)
	default:
		return c.fail(ErrUnreachable, id, fmt.Sprintf("it answered HTTP %d", code), nil)
	}
}

func (c *Checker) fail(kind error, id, cause string, err error) error {
	return &Error{Kind: kind, ID: id, Endpoint: c.endpoint, Cause: cause, Err: err}
}

// cause names why a request failed, in words safe to show a client.
func (c *Checker) cause(err error) string {
	var dns *net.DNSError
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("no answer within %s", c.timeout)
	case errors.As(err, &dns):
		return fmt.Sprintf("the name %s does not resolve", dns.Name)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH):
		return "no route to it"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.As(err, &certErr) || errors.As(err, &unknownCA) || errors.As(err, &hostname):
		return "its TLS certificate is not trusted"
	}
	return "network error"
}
