package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/understudy-ai/training-service/dataset"
	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/store"
)

// Config tunes a Driver. Zero values take the defaults in code.
type Config struct {
	// DataDir holds the per-job keys and datasets.
	DataDir string
	// MaxConcurrent bounds the jobs between provisioning and tearing_down at once.
	MaxConcurrent int
	// Runtime is the training runtime shipped to every machine.
	Runtime fs.FS
	// WeightsURL is the base URL of the weights store, used to build weights_uri.
	WeightsURL string
	// Weights removes objects from the weights store: the checkpoints copied off a machine
	// once a newer one is stored, and the last one when the job ends (unless it is the
	// checkpoint a stopped job keeps). Nil keeps every stored checkpoint.
	Weights BlobRemover
	// CallbackURL is the service's base URL as the machines reach it, for the internal
	// completed endpoint; empty disables the callback.
	CallbackURL string
	// Python is an interpreter, per provider, the machine should use instead of
	// bootstrapping one (the local provider's machine is this host).
	Python map[string]string
	// RuntimeCache is a directory, per provider, where the machine's runtime keeps the
	// Python environment it bootstraps (UNDERSTUDY_CACHE); empty leaves the runtime's
	// default (the user's cache directory).
	RuntimeCache map[string]string
	// ConnectTimeout bounds how long the Driver keeps trying to reach a new machine.
	ConnectTimeout time.Duration
	// ReconnectTimeout bounds how long a lost SSH connection is retried.
	ReconnectTimeout time.Duration
	// TeardownAttempts and TeardownBackoff shape the retries of a failing destroy.
	TeardownAttempts int
	TeardownBackoff  time.Duration
	// CheckpointRemoveBackoff is the first wait before a stored checkpoint's file that could
	// not be deleted is tried again (default 1s).
	CheckpointRemoveBackoff time.Duration
	// TeardownTimeout bounds one destroy attempt.
	TeardownTimeout time.Duration
	// Owner names this instance in the jobs it drives.
	Owner string
	// MachineLease arms the dead-man's switch of cloud machines: a machine stops its work
	// and itself when the service has not renewed its lease for this long (the service
	// renews it every fifth of it while it drives the job). Default 15 minutes; negative
	// turns it off.
	MachineLease time.Duration
	// InspectAfter is how long a machine may stay unreachable before the Driver asks its
	// provider whether it still exists; default 20 seconds.
	InspectAfter time.Duration
	// Inventories list and remove, per provider, what the service made at that cloud: for
	// `stacks gc`, and to sweep a job's leftovers after its stack is destroyed.
	Inventories map[string]Inventory
	// StopGrace is how long a job being stopped (cancel, max_duration_seconds, a budget)
	// gives its runtime, after SIGTERM, to write a checkpoint and exit before it is killed
	// and the machine torn down. Default 60 seconds.
	StopGrace time.Duration
	// MaxHourlySpend caps the sum of the hourly prices (USD) of the machines the service
	// holds at once; 0: no cap. A job waits queued while the cap leaves no room for its
	// machine, and fails budget_exceeded when its new machine would take the sum over it.
	MaxHourlySpend float64
	// BudgetCheckEvery is how often a job's cost is checked against its max_cost_usd while
	// it trains; default 5 seconds.
	BudgetCheckEvery time.Duration
	// DatasetRoots are the directories a local dataset_uri may name a file under (serve
	// --dataset-root); none: local datasets are refused.
	DatasetRoots []string
	// ModelRoots are the directories a local slm_type may name a model directory under
	// (serve --model-root); none: local models are refused.
	ModelRoots []string
	// Hub, when set, is asked at submit whether a slm_type that is not a local path names
	// a model the machines can download, so that a Hub id the service already knows to be
	// bad is refused before a machine is rented; nil: Hub ids are not checked.
	Hub HubChecker
	// DatasetLimits bound every dataset a start brings, from a file, an object or inline;
	// zero fields take the defaults (DefaultMaxDatasetBytes, DefaultMaxDatasetRecords).
	DatasetLimits dataset.Limits
	// MaxQueued bounds the jobs waiting for a machine slot; a start beyond it is refused
	// (job.CodeResourceExhausted) and stores nothing. Default DefaultMaxQueued.
	MaxQueued int
	// DefaultMaxDuration is the max_duration_seconds of a start that gives none; 0: none.
	DefaultMaxDuration time.Duration
	// MaxAttempts is how many machines one job may use: a machine taken away while the job
	// trains (preempted, machine_lost) is replaced, and training resumes from the last
	// stored checkpoint, until this many were used. Default 3; 1 turns replacement off.
	MaxAttempts int
	// CheckpointEvery is how often the runtime writes a checkpoint while it trains; the
	// Driver copies each into the weights store as soon as it is written. Default 5 minutes.
	CheckpointEvery time.Duration
	// Observers are told of every job change the Driver stores (see Observer): webhooks and
	// metrics. Each must return quickly.
	Observers []Observer
}

func (c *Config) defaults() {
	if c.DatasetLimits.MaxBytes <= 0 {
		c.DatasetLimits.MaxBytes = DefaultMaxDatasetBytes
	}
	if c.DatasetLimits.MaxRecords <= 0 {
		c.DatasetLimits.MaxRecords = DefaultMaxDatasetRecords
	}
	if c.MaxQueued <= 0 {
		c.MaxQueued = DefaultMaxQueued
	}
	if c.MaxConcurrent <= 0 {
		c.MaxConcurrent = 4
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 3
	}
	if c.CheckpointEvery <= 0 {
		c.CheckpointEvery = 5 * time.Minute
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 5 * time.Minute
	}
	if c.ReconnectTimeout <= 0 {
		c.ReconnectTimeout = 2 * time.Minute
	}
	if c.TeardownAttempts <= 0 {
		c.TeardownAttempts = 4
	}
	if c.CheckpointRemoveBackoff <= 0 {
		c.CheckpointRemoveBackoff = time.Second
	}
	if c.TeardownBackoff <= 0 {
		c.TeardownBackoff = 2 * time.Second
	}
	if c.TeardownTimeout <= 0 {
		c.TeardownTimeout = 15 * time.Minute
	}
	if c.MachineLease == 0 {
		c.MachineLease = 15 * time.Minute
	}
	if c.InspectAfter <= 0 {
		c.InspectAfter = 20 * time.Second
	}
	if c.StopGrace <= 0 {
		c.StopGrace = 60 * time.Second
	}
	if c.BudgetCheckEvery <= 0 {
		c.BudgetCheckEvery = 5 * time.Second
	}
	if c.Owner == "" {
		host, _ := os.Hostname()
		c.Owner = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
}

// Causes of a job context's cancellation.
var (
	errCancelRequested = errors.New("cancel requested")
	errShutdown        = errors.New("service shutting down")
	errTimeout         = errors.New("max_duration_seconds exceeded")
)

// Driver runs jobs. It is safe for concurrent use.
type Driver struct {
	cfg   Config
	store store.Store
	prov  Provisioner
	conn  Connector
	log   *slog.Logger
	sem   chan struct{}

	baseCtx  context.Context
	shutdown context.CancelCauseFunc
	wg       sync.WaitGroup

	mu      sync.Mutex
	running map[string]*runState
	pending int // starts past the queue check, not yet launched (MaxQueued)
	spend   *spend

	fp failpoints // test hooks, from FailpointEnv only
}

type runState struct {
	cancel context.CancelCauseFunc
	nudge  chan struct{}
}

// New returns a Driver. Call Start to resume stored jobs and begin work.
func New(cfg Config, st store.Store, prov Provisioner, conn Connector, log *slog.Logger) (*Driver, error) {
	cfg.defaults()
	if cfg.DataDir == "" {
		return nil, errors.New("new driver: DataDir is required")
	}
	if cfg.Runtime == nil {
		return nil, errors.New("new driver: Runtime is required")
	}
	for _, d := range []string{keysDir(cfg.DataDir), datasetsDir(cfg.DataDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("new driver: %w", err)
		}
	}
	fp, err := parseFailpoints(os.Getenv(FailpointEnv))
	if err != nil {
		return nil, fmt.Errorf("new driver: %w", err)
	}
	if armed := fp.armed(); len(armed) > 0 {
		log.Warn("failpoints armed: jobs pause there (a test hook)", "failpoints", strings.Join(armed, ","))
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	return &Driver{
		cfg: cfg, store: st, prov: prov, conn: conn, log: log,
		sem:     make(chan struct{}, cfg.MaxConcurrent),
		baseCtx: ctx, shutdown: cancel,
		running: map[string]*runState{},
		spend:   newSpend(cfg.MaxHourlySpend),
		fp:      fp,
	}, nil
}

func keysDir(data string) string     { return filepath.Join(data, "keys") }
func datasetsDir(data string) string { return filepath.Join(data, "datasets") }

// Start resumes every non-terminal job in the store and destroys stacks that no live job
// owns. It returns once the work is scheduled.
func (d *Driver) Start(ctx context.Context) error {
	live := map[string]bool{}
	cursor := ""
	for {
		jobs, next, err := d.store.JobList(ctx, store.JobListParams{Statuses: nonTerminal(), Limit: store.MaxLimit, Cursor: cursor})
		if err != nil {
			return fmt.Errorf("resume jobs: %w", err)
		}
		for _, j := range jobs {
			live[j.TrainID] = true
			d.log.Info("resuming job", "train_id", j.TrainID, "phase", string(j.Status))
			if j.Internal.Owner != d.cfg.Owner {
				// This instance drives the job from now on (a restart, or a replica that
				// took the lead of a shared store).
				if _, err := d.update(ctx, j.TrainID, func(j *job.Job) error {
					j.Internal.Owner = d.cfg.Owner
					return nil
				}); err != nil {
					d.log.Warn("record the job's new owner", "train_id", j.TrainID, "err", err)
				}
			}
			d.event(ctx, j.TrainID, "resumed", j.Status, "service restarted; resuming the job from "+string(j.Status), nil)
			d.notify(ctx, Change{Kind: ChangeResumed, Job: j})
			d.launch(j.TrainID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	d.sweepDatasets(ctx)
	names, err := d.prov.Stacks(ctx)
	if err != nil {
		d.log.Warn("list stacks for the reaper", "err", err)
		return nil
	}
	for _, name := range names {
		if live[name] {
			continue
		}
		name := name
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.reap(name)
		}()
	}
	return nil
}

// reap destroys a stack that belongs to no live job.
func (d *Driver) reap(name string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(d.baseCtx), d.cfg.TeardownTimeout)
	defer cancel()
	d.log.Warn("destroying orphaned stack", "train_id", name, "stack", name)
	if err := d.prov.Teardown(ctx, name, func(string) {}); err != nil {
		d.log.Error("destroy orphaned stack", "train_id", name, "stack", name, "err", err)
		return
	}
	if _, err := d.store.JobGet(ctx, name); err == nil {
		d.event(ctx, name, "stack_reaped", "", "an orphaned stack of this job was destroyed", nil)
	}
}

func nonTerminal() []job.Status {
	var out []job.Status
	for _, s := range job.Statuses {
		if !s.Terminal() {
			out = append(out, s)
		}
	}
	return out
}

// Stop stops following jobs without tearing them down: their machines keep running and a
// restarted Driver reattaches. It waits for the job goroutines to return or ctx to end.
func (d *Driver) Stop(ctx context.Context) error {
	d.shutdown(errShutdown)
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// launch starts the goroutine that drives trainID, unless one already does.
func (d *Driver) launch(trainID string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.running[trainID]; ok {
		return
	}
	if d.baseCtx.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancelCause(d.baseCtx)
	rs := &runState{cancel: cancel, nudge: make(chan struct{}, 1)}
	d.running[trainID] = rs
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		// Last, after any teardown: a job that ended keeps no copy of its data.
		defer d.removeDatasetIfEnded(trainID)
		defer func() {
			d.mu.Lock()
			delete(d.running, trainID)
			d.mu.Unlock()
			cancel(nil)
		}()
		defer func() {
			// A bug in one job must not take the service down, nor leave its machine:
			// record it and tear down.
			if v := recover(); v != nil {
				d.log.Error("job goroutine panicked", "train_id", trainID, "panic", v, "stack", string(debug.Stack()))
				d.teardown(context.WithoutCancel(ctx), trainID, &job.Outcome{Status: job.StatusFailed,
					Failure: &job.Failure{Code: job.ReasonInternal, Message: "the service hit an internal error while running the job"}})
			}
		}()
		d.drive(ctx, trainID, rs)
	}()
}

// Cancel asks for the job to stop wherever it is. It is a job.CodeFailedPrecondition error
// when the job is already terminal.
func (d *Driver) Cancel(ctx context.Context, trainID string) (*job.Job, error) {
	j, err := d.update(ctx, trainID, func(j *job.Job) error {
		if j.Status.Terminal() {
			return &job.Error{Code: job.CodeFailedPrecondition, Reason: "job_terminal",
				Message: fmt.Sprintf("job %s is already %s", trainID, j.Status)}
		}
		j.CancelRequested = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	d.event(ctx, trainID, "cancel_requested", j.Status, "cancellation requested", nil)
	d.mu.Lock()
	rs, ok := d.running[trainID]
	d.mu.Unlock()
	if ok {
		rs.cancel(errCancelRequested)
	} else {
		// Nobody drives it here (a queued job whose goroutine has not started, or a job
		// left by another instance): drive it now so the cancellation is carried out.
		d.launch(trainID)
	}
	return j, nil
}

// Nudge wakes a job that is waiting to reconnect to its machine.
func (d *Driver) Nudge(trainID string) {
	d.mu.Lock()
	rs, ok := d.running[trainID]
	d.mu.Unlock()
	if ok {
		select {
		case rs.nudge <- struct{}{}:
		default:
		}
	}
}

// update re-reads the job, applies fn and writes it compare-and-set, retrying on conflicts.
func (d *Driver) update(ctx context.Context, trainID string, fn func(*job.Job) error) (*job.Job, error) {
	for attempt := 0; ; attempt++ {
		j, err := d.store.JobGet(ctx, trainID)
		if err != nil {
			return nil, err
		}
		if err := fn(j); err != nil {
			return nil, err
		}
		j.UpdatedAt = time.Now().UTC()
		err = d.store.JobUpdate(ctx, j)
		if err == nil {
			return j, nil
		}
		if job.ReasonOf(err) != store.ReasonConflict || attempt > 20 {
			return nil, err
		}
	}
}

// transition moves the job to status `to`, stamping the phase and recording an event.
func (d *Driver) transition(ctx context.Context, trainID string, to job.Status, msg string, fn func(*job.Job)) (*job.Job, error) {
	now := time.Now().UTC()
	var from job.Status
	j, err := d.update(ctx, trainID, func(j *job.Job) error {
		if err := job.CheckTransition(j.Status, to); err != nil {
			return err
		}
		from = j.Status
		j.Status = to
		if j.Timestamps == nil {
			j.Timestamps = map[job.Status]time.Time{}
		}
		j.Timestamps[to] = now
		if fn != nil {
			fn(j)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	d.log.Info("job moved", "train_id", trainID, "phase", string(to), "from", string(from))
	d.event(ctx, trainID, "status", to, msg, nil)
	d.logLines(ctx, trainID, "service", fmt.Sprintf("status: %s — %s", to, msg))
	d.notify(ctx, Change{Kind: ChangeStatus, Job: j, From: from})
	return j, nil
}

func (d *Driver) event(ctx context.Context, trainID, typ string, st job.Status, msg string, data map[string]any) {
	if _, err := d.store.EventAppend(context.WithoutCancel(ctx), job.Event{TrainID: trainID, Type: typ, Status: st, Message: msg, Data: data}); err != nil {
		d.log.Warn("record event", "train_id", trainID, "err", err)
	}
}

func (d *Driver) logLines(ctx context.Context, trainID, stream string, lines ...string) {
	if len(lines) == 0 {
		return
	}
	ll := make([]store.LogLine, len(lines))
	now := time.Now().UTC()
	for i, l := range lines {
		ll[i] = store.LogLine{Time: now, Stream: stream, Text: l}
	}
	if _, err := d.store.LogAppend(context.WithoutCancel(ctx), trainID, ll); err != nil {
		d.log.Warn("append job log", "train_id", trainID, "err", err)
	}
}

// Get returns a job.
func (d *Driver) Get(ctx context.Context, trainID string) (*job.Job, error) {
	return d.store.JobGet(ctx, trainID)
}

// List returns a page of jobs.
func (d *Driver) List(ctx context.Context, p store.JobListParams) ([]*job.Job, string, error) {
	return d.store.JobList(ctx, p)
}

// Events returns a job's lifecycle events; job.CodeNotFound for an unknown job.
func (d *Driver) Events(ctx context.Context, trainID string) ([]job.Event, error) {
	if _, err := d.store.JobGet(ctx, trainID); err != nil {
		return nil, err
	}
	return d.store.EventList(ctx, trainID)
}

// Logs returns up to limit log lines after seq.
func (d *Driver) Logs(ctx context.Context, trainID string, after int64, limit int) ([]store.LogLine, error) {
	return d.store.LogList(ctx, trainID, after, limit)
}

// StackInfo is one stack in the backend and the job that owns it.
type StackInfo struct {
	Name      string     `json:"name"`
	JobStatus job.Status `json:"job_status,omitempty"`
	Orphaned  bool       `json:"orphaned"`
}

// Stacks lists every stack with the status of its job; a stack whose job is terminal or
// unknown is orphaned (the reaper destroys those at start).
func (d *Driver) Stacks(ctx context.Context) ([]StackInfo, error) {
	names, err := d.prov.Stacks(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]StackInfo, 0, len(names))
	for _, n := range names {
		si := StackInfo{Name: n, Orphaned: true}
		if j, err := d.store.JobGet(ctx, n); err == nil {
			si.JobStatus = j.Status
			si.Orphaned = j.Status.Terminal()
		}
		out = append(out, si)
	}
	return out, nil
}

// Ready reports whether the store answers.
func (d *Driver) Ready(ctx context.Context) error {
	_, err := d.store.JobGet(ctx, "readiness-probe")
	if job.CodeOf(err) == job.CodeNotFound {
		return nil
	}
	return err
}
