package webhook

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/lifecycle"
)

// Results a Notifier reports through Options.Report.
const (
	ResultDelivered = "delivered" // the receiver answered 2xx
	ResultFailed    = "failed"    // attempts or time ran out, or the receiver refused it (4xx)
	ResultDropped   = "dropped"   // the queue was full, or the Notifier closed before sending it
)

// Options configure a Notifier. Zero values take the defaults in code.
type Options struct {
	// URL receives the deliveries (http or https, without credentials). Required.
	URL string
	// Secret signs every delivery (see Sign). Required.
	Secret string
	// Render turns a job into the delivery's body: the status document. Required.
	Render func(*job.Job) ([]byte, error)
	// QueueSize bounds the deliveries waiting to be sent; default 1024.
	QueueSize int
	// MaxAttempts bounds the attempts of one delivery; default 8.
	MaxAttempts int
	// MaxElapsed bounds the time one delivery is retried for, from its first attempt;
	// default 5 minutes.
	MaxElapsed time.Duration
	// Backoff is the wait after the first failed attempt, doubled after each one up to
	// MaxBackoff, each wait drawn between half and all of it; defaults 1s and 1 minute.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// Timeout bounds one attempt; default 10 seconds.
	Timeout time.Duration
	// Client sends the requests; default one that follows no redirects.
	Client *http.Client
	Logger *slog.Logger
	// Report, when set, is told the result of each delivery (ResultDelivered, …), for
	// metrics. It must return quickly.
	Report func(result string)
}

// Notifier posts every status change of a job to Options.URL. It is a lifecycle.Observer.
// It is safe for concurrent use.
type Notifier struct {
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	queue  []*delivery
	closed bool
	wake   chan struct{}

	ctx    context.Context // cancelled by Close once the drain time is up
	cancel context.CancelFunc
	done   chan struct{}
}

type delivery struct {
	id      string
	trainID string
	status  job.Status
	body    []byte
}

// New validates opts and starts the Notifier's worker. Close stops it.
func New(opts Options) (*Notifier, error) {
	u, err := url.Parse(opts.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("webhook url %q: want an http or https URL", opts.URL)
	}
	if u.User != nil {
		return nil, errors.New("webhook url: credentials do not belong in the URL; the deliveries are signed with the webhook secret")
	}
	if opts.Secret == "" {
		return nil, errors.New("webhook: a secret is required")
	}
	if opts.Render == nil {
		return nil, errors.New("webhook: Render is required")
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 1024
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 8
	}
	if opts.MaxElapsed <= 0 {
		opts.MaxElapsed = 5 * time.Minute
	}
	if opts.Backoff <= 0 {
		opts.Backoff = time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = time.Minute
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Client == nil {
		opts.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Report == nil {
		opts.Report = func(string) {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Notifier{opts: opts, log: opts.Logger, wake: make(chan struct{}, 1), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	go n.run()
	return n, nil
}

// JobChanged queues a delivery for a status change; other changes are not sent. It never
// blocks on the receiver.
func (n *Notifier) JobChanged(ctx context.Context, c lifecycle.Change) {
	if c.Kind != lifecycle.ChangeStatus || c.Job == nil {
		return
	}
	body, err := n.opts.Render(c.Job)
	if err != nil {
		n.log.Error("render webhook body", "train_id", c.Job.TrainID, "err", err)
		return
	}
	n.Enqueue(c.Job.TrainID, c.Job.Status, body)
}

// Enqueue queues a delivery of body, a job's status document. When the queue is full the
// oldest delivery waiting is dropped.
func (n *Notifier) Enqueue(trainID string, status job.Status, body []byte) {
	d := &delivery{id: newID(), trainID: trainID, status: status, body: body}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		n.log.Warn("webhook delivery after shutdown dropped", "train_id", trainID, "status", string(status), "delivery", d.id)
		n.opts.Report(ResultDropped)
		return
	}
	var dropped *delivery
	if len(n.queue) >= n.opts.QueueSize {
		dropped = n.queue[0]
		n.queue[0] = nil
		n.queue = n.queue[1:]
	}
	n.queue = append(n.queue, d)
	n.mu.Unlock()
	if dropped != nil {
		n.log.Warn("webhook queue full; dropped the oldest delivery", "train_id", dropped.trainID,
			"status", string(dropped.status), "delivery", dropped.id, "queue_size", n.opts.QueueSize)
		n.opts.Report(ResultDropped)
	}
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// Close stops taking deliveries and gives the worker until ctx ends to send what is queued;
// what is left then is dropped (and an attempt in flight cut).
func (n *Notifier) Close(ctx context.Context) error {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
	select {
	case <-n.done:
		return nil
	case <-ctx.Done():
		n.cancel()
		<-n.done
		return ctx.Err()
	}
}

func (n *Notifier) next() (*delivery, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.queue) == 0 {
		return nil, n.closed
	}
	d := n.queue[0]
	n.queue[0] = nil
	n.queue = n.queue[1:]
	return d, false
}

func (n *Notifier) run() {
	defer close(n.done)
	defer n.cancel()
	for {
		d, closed := n.next()
		if d == nil {
			if closed {
				return
			}
			select {
			case <-n.wake:
			case <-n.ctx.Done():
			}
			continue
		}
		if n.ctx.Err() != nil {
			n.log.Warn("webhook delivery dropped at shutdown", "train_id", d.trainID, "status", string(d.status), "delivery", d.id)
			n.opts.Report(ResultDropped)
			continue
		}
		n.deliver(d)
	}
}

// deliver sends d until it is accepted, refused, or its attempts or time run out.
func (n *Notifier) deliver(d *delivery) {
	start := time.Now()
	log := n.log.With("train_id", d.trainID, "status", string(d.status), "delivery", d.id)
	wait := n.opts.Backoff
	for attempt := 1; ; attempt++ {
		retry, after, err := n.attempt(d, attempt)
		if err == nil {
			log.Debug("webhook delivered", "attempt", attempt)
			n.opts.Report(ResultDelivered)
			return
		}
		if !retry || attempt >= n.opts.MaxAttempts || n.ctx.Err() != nil {
			log.Warn("webhook delivery failed", "attempt", attempt, "err", err)
			n.opts.Report(ResultFailed)
			return
		}
		pause := wait/2 + rand.N(wait/2+1)
		if after > pause {
			pause = min(after, n.opts.MaxBackoff)
		}
		if time.Since(start)+pause > n.opts.MaxElapsed {
			log.Warn("webhook delivery failed; giving up", "attempt", attempt, "elapsed", time.Since(start).Round(time.Millisecond), "err", err)
			n.opts.Report(ResultFailed)
			return
		}
		log.Info("webhook delivery failed; retrying", "attempt", attempt, "retry_in", pause.Round(time.Millisecond), "err", err)
		select {
		case <-time.After(pause):
		case <-n.ctx.Done():
		}
		wait = min(wait*2, n.opts.MaxBackoff)
	}
}

// attempt posts d once. retry says whether a failure may pass with time (a network error,
// 5xx, 429); after is the receiver's Retry-After, if any.
func (n *Notifier) attempt(d *delivery, attempt int) (retry bool, after time.Duration, err error) {
	ctx, cancel := context.WithTimeout(n.ctx, n.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.opts.URL, bytes.NewReader(d.body))
	if err != nil {
		return false, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "understudy-train-webhook/1")
	req.Header.Set(HeaderSignature, SignatureHeader(n.opts.Secret, time.Now(), d.body))
	req.Header.Set(HeaderDelivery, d.id)
	req.Header.Set(HeaderEvent, EventStatusChanged)
	req.Header.Set(HeaderStatus, string(d.status))
	req.Header.Set(HeaderTrainID, d.trainID)
	req.Header.Set(HeaderAttempt, strconv.Itoa(attempt))
	resp, err := n.opts.Client.Do(req)
	if err != nil {
		return true, 0, fmt.Errorf("post webhook: %w", err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return false, 0, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			after = time.Duration(s) * time.Second
		}
		return true, after, fmt.Errorf("post webhook: receiver answered %s", resp.Status)
	default:
		return false, 0, fmt.Errorf("post webhook: receiver answered %s", resp.Status)
	}
}

// newID returns a random delivery id: 128 bits, never reused.
func newID() string {
	var b [16]byte
	if _, err := cryptorand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return "dlv_" + hex.EncodeToString(b[:])
}
