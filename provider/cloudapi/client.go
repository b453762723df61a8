package cloudapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client calls one cloud's REST API. It is safe for concurrent use.
type Client struct {
	// Provider names the cloud in errors ("runpod").
	Provider string
	// BaseURL is prepended to every request path; it must not end in "/".
	BaseURL string
	// Token is sent as "Authorization: Bearer <Token>". It never appears in errors.
	Token string
	// HTTP does the requests; nil means a client with a 60s timeout per request.
	HTTP *http.Client
	// Decode turns a failed response into an *Error with the provider's reason. It gets the
	// status and the body; the client fills in Provider, Op, Status and RetryAfter.
	Decode func(status int, body []byte) *Error
	// Limiter, when set, is waited for before every request (the API's overall rate).
	Limiter Limiter
	// Retry shapes the retries; zero fields take the defaults.
	Retry RetryPolicy
	// UserAgent is sent with every request.
	UserAgent string
}

// RetryPolicy shapes retries: exponential backoff from Initial, doubling up to Max, with
// full jitter, until Deadline has passed since the first attempt (or ctx ends).
type RetryPolicy struct {
	Initial  time.Duration // default 1s
	Max      time.Duration // default 30s
	Deadline time.Duration // default 3m
	// MaxRetryAfter caps a Retry-After the server asks for; default 2m.
	MaxRetryAfter time.Duration
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Initial <= 0 {
		p.Initial = time.Second
	}
	if p.Max <= 0 {
		p.Max = 30 * time.Second
	}
	if p.Deadline <= 0 {
		p.Deadline = 3 * time.Minute
	}
	if p.MaxRetryAfter <= 0 {
		p.MaxRetryAfter = 2 * time.Minute
	}
	return p
}

// Request is one API call.
type Request struct {
	Method string
	Path   string // appended to BaseURL
	Query  url.Values
	// Body is encoded as JSON when not nil.
	Body any
	// Op names the call in errors ("create pod").
	Op string
	// Idempotent requests are retried after 5xx answers and transport errors. Others are
	// retried only after a 429 (which the server did not act on); an ambiguous failure is
	// returned with Error.Ambiguous set so that the caller can look before retrying.
	Idempotent bool
	// Limiter, when set, is waited for before this request besides Client.Limiter (a
	// stricter limit on one operation, such as Lambda's launches).
	Limiter Limiter
	// NotFoundOK makes a 404 a success with no decoding (deleting what is already gone).
	NotFoundOK bool
}

// Do performs req, retrying as its policy allows, and decodes a 2xx JSON body into out
// (when out is not nil). It returns the final status code with any error.
func (c *Client) Do(ctx context.Context, req Request, out any) (int, error) {
	policy := c.Retry.withDefaults()
	deadline := time.Now().Add(policy.Deadline)
	var body []byte
	if req.Body != nil {
		var err error
		if body, err = json.Marshal(req.Body); err != nil {
			return 0, &Error{Provider: c.Provider, Op: req.Op, Reason: ReasonInvalid, Message: "encode request", Err: err}
		}
	}
	backoff := policy.Initial
	for attempt := 1; ; attempt++ {
		status, err := c.once(ctx, req, body, out)
		if err == nil {
			return status, nil
		}
		var e *Error
		if !errors.As(err, &e) {
			return status, err
		}
		retryable := e.Status == http.StatusTooManyRequests ||
			(req.Idempotent && (e.Status >= 500 || (e.Status == 0 && ctx.Err() == nil)))
		if !retryable {
			return status, err
		}
		wait := time.Duration(rand.Int64N(int64(backoff) + 1)) // full jitter
		if e.RetryAfter > 0 {
			wait = min(e.RetryAfter, policy.MaxRetryAfter)
		}
		if time.Now().Add(wait).After(deadline) {
			if e.Status == http.StatusTooManyRequests {
				e.Reason = ReasonRateLimited
			} else if e.Reason == "" || e.Reason == ReasonUnknown {
				e.Reason = ReasonUnavailable
			}
			e.Message = strings.TrimSpace(fmt.Sprintf("%s (gave up after %d attempts)", e.Message, attempt))
			return status, e
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return status, &Error{Provider: c.Provider, Op: req.Op, Reason: ReasonUnavailable, Message: "canceled while waiting to retry", Err: ctx.Err(), Ambiguous: e.Ambiguous}
		case <-t.C:
		}
		backoff = min(backoff*2, policy.Max)
	}
}

func (c *Client) once(ctx context.Context, req Request, body []byte, out any) (int, error) {
	for _, l := range []Limiter{c.Limiter, req.Limiter} {
		if l != nil {
			if err := l.Wait(ctx); err != nil {
				return 0, &Error{Provider: c.Provider, Op: req.Op, Reason: ReasonUnavailable, Message: "wait for the rate limit", Err: err}
			}
		}
	}
	u := c.BaseURL + req.Path
	if len(req.Query) > 0 {
		u += "?" + req.Query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	hr, err := http.NewRequestWithContext(ctx, req.Method, u, rd)
	if err != nil {
		return 0, &Error{Provider: c.Provider, Op: req.Op, Reason: ReasonInvalid, Message: "build request", Err: err}
	}
	if c.Token != "" {
		hr.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hr.Header.Set("Accept", "application/json")
	if body != nil {
		hr.Header.Set("Content-Type", "application/json")
	}
	if c.UserAgent != "" {
		hr.Header.Set("User-Agent", c.UserAgent)
	}
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	resp, err := hc.Do(hr)
	if err != nil {
		// No answer: the server may or may not have acted on it.
		return 0, &Error{Provider: c.Provider, Op: req.Op, Reason: ReasonUnavailable, Ambiguous: true,
			Message: "no answer", Err: scrubURL(err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return resp.StatusCode, &Error{Provider: c.Provider, Op: req.Op, Status: resp.StatusCode, Reason: ReasonUnavailable,
			Ambiguous: true, Message: "read answer", Err: scrubURL(err)}
	}
	if resp.StatusCode == http.StatusNotFound && req.NotFoundOK {
		return resp.StatusCode, nil
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		if out != nil && len(bytes.TrimSpace(data)) > 0 {
			if err := json.Unmarshal(data, out); err != nil {
				return resp.StatusCode, &Error{Provider: c.Provider, Op: req.Op, Status: resp.StatusCode, Reason: ReasonUnknown,
					Message: "decode answer: " + err.Error()}
			}
		}
		return resp.StatusCode, nil
	}
	var e *Error
	if c.Decode != nil {
		e = c.Decode(resp.StatusCode, data)
	}
	if e == nil {
		e = &Error{Message: http.StatusText(resp.StatusCode)}
	}
	e.Provider, e.Op, e.Status = c.Provider, req.Op, resp.StatusCode
	if e.Reason == "" {
		e.Reason = ReasonForStatus(resp.StatusCode)
	}
	if resp.StatusCode >= 500 {
		e.Ambiguous = true
	}
	e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	return resp.StatusCode, e
}

var defaultHTTP = &http.Client{Timeout: 60 * time.Second}

// ReasonForStatus is the reason an HTTP status implies when the body says no more.
func ReasonForStatus(status int) Reason {
	switch {
	case status == http.StatusUnauthorized:
		return ReasonAuth
	case status == http.StatusPaymentRequired:
		return ReasonQuota
	case status == http.StatusForbidden:
		return ReasonAuth
	case status == http.StatusNotFound:
		return ReasonNotFound
	case status == http.StatusConflict:
		return ReasonConflict
	case status == http.StatusTooManyRequests:
		return ReasonRateLimited
	case status >= 500:
		return ReasonUnavailable
	case status >= 400:
		return ReasonInvalid
	}
	return ReasonUnknown
}

// parseRetryAfter reads a Retry-After value: seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// scrubURL drops the request URL from a transport error: query strings may carry tokens
// in some APIs, and the base URL is no news to the caller.
func scrubURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		var ne net.Error
		if errors.As(ue.Err, &ne) && ne.Timeout() {
			return fmt.Errorf("%s: timeout", ue.Op)
		}
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

// Poll calls check every interval until it reports done or fails, or ctx ends (then it
// returns ctx's error): the waits for a machine to start or to go away.
func Poll(ctx context.Context, every time.Duration, check func() (done bool, err error)) error {
	for {
		done, err := check()
		if done || err != nil {
			return err
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}
