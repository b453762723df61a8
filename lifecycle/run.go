package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing/fstest"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/progress"
	"github.com/understudy-ai/training-service/sshrunner"
	"github.com/understudy-ai/training-service/store"
)

// drive takes one job from wherever it is to a terminal state.
func (d *Driver) drive(ctx context.Context, trainID string, rs *runState) {
	log := d.log.With("train_id", trainID)
	// Read without the job's context: a cancellation must still be carried out.
	j, err := d.store.JobGet(context.WithoutCancel(ctx), trainID)
	if err != nil {
		log.Error("load job", "err", err)
		return
	}
	if j.Status.Terminal() {
		return
	}
	if j.CancelRequested {
		rs.cancel(errCancelRequested)
	}
	if j.Status == job.StatusQueued {
		select {
		case d.sem <- struct{}{}:
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), errShutdown) {
				return
			}
			d.endQueued(ctx, trainID, job.StatusCancelled, nil)
			return
		}
		if ctx.Err() != nil && !errors.Is(context.Cause(ctx), errShutdown) {
			<-d.sem
			d.endQueued(ctx, trainID, job.StatusCancelled, nil)
			return
		}
	} else {
		// A resumed job already holds a machine: it must be finished or torn down even
		// when it was cancelled meanwhile, so it waits for a slot without giving up.
		select {
		case d.sem <- struct{}{}:
		case <-d.baseCtx.Done():
			return
		}
	}
	defer func() { <-d.sem }()

	if j.MaxDurationSeconds > 0 {
		startedAt := j.CreatedAt
		if t, ok := j.Timestamps[job.StatusProvisioning]; ok {
			startedAt = t
		}
		left := time.Until(startedAt.Add(time.Duration(j.MaxDurationSeconds) * time.Second))
		timer := time.AfterFunc(max(left, 0), func() { rs.cancel(errTimeout) })
		defer timer.Stop()
	}

	var outcome *job.Outcome
	if j.Status == job.StatusTearingDown {
		outcome = j.Internal.Outcome
	} else {
		var err error
		if j.Internal.Replacing && (j.Status == job.StatusUploading || j.Status == job.StatusTraining) {
			// The service stopped while it replaced the job's machine: finish that first.
			err = d.finishReplace(ctx, trainID)
		}
		if err == nil {
			err = d.work(ctx, trainID, rs)
		}
		for d.replaceable(ctx, err) {
			if err = d.replace(ctx, trainID, err); err != nil {
				break
			}
			err = d.work(ctx, trainID, rs)
		}
		if (ctx.Err() != nil && errors.Is(context.Cause(ctx), errShutdown)) || errors.Is(err, errShutdown) {
			log.Info("leaving job for the next start", "phase", "shutdown")
			return
		}
		outcome = d.outcome(ctx, err)
		if err != nil && outcome.Status == job.StatusFailed {
			log.Error("job failed", "err", err)
		}
	}
	d.teardown(context.WithoutCancel(ctx), trainID, outcome)
}

// outcome turns the result of work into where the job ends.
func (d *Driver) outcome(ctx context.Context, err error) *job.Outcome {
	cause := context.Cause(ctx)
	switch {
	case err == nil:
		return &job.Outcome{Status: job.StatusCompleted}
	case ctx.Err() != nil && errors.Is(cause, errCancelRequested):
		return &job.Outcome{Status: job.StatusCancelled}
	case ctx.Err() != nil && errors.Is(cause, errTimeout):
		return &job.Outcome{Status: job.StatusFailed, Failure: &job.Failure{Code: job.ReasonTimeout,
			Message: "the job ran longer than its max_duration_seconds and was stopped"}}
	}
	var be *budgetExceeded
	if ctx.Err() != nil && errors.As(cause, &be) {
		return &job.Outcome{Status: job.StatusFailed, Failure: &job.Failure{Code: job.ReasonBudgetExceeded, Message: be.msg}}
	}
	reason := job.ReasonOf(err)
	if reason == "" {
		reason = job.ReasonInternal
	}
	return &job.Outcome{Status: job.StatusFailed, Failure: &job.Failure{Code: reason, Message: job.MessageOf(err)}}
}

// endQueued ends a job that never got a machine.
func (d *Driver) endQueued(ctx context.Context, trainID string, to job.Status, f *job.Failure) {
	ctx = context.WithoutCancel(ctx)
	msg := "cancelled before a machine was provisioned"
	if f != nil {
		msg = f.Message
	}
	if _, err := d.transition(ctx, trainID, to, msg, func(j *job.Job) { j.Error = f }); err != nil {
		d.log.Error("end queued job", "train_id", trainID, "err", err)
	}
}

// teardown destroys the job's stack with retries and moves it to its outcome. If destroy
// keeps failing the job fails with teardown_failed, naming the stack for an operator.
func (d *Driver) teardown(ctx context.Context, trainID string, outcome *job.Outcome) {
	log := d.log.With("train_id", trainID, "stack", trainID)
	defer d.release(trainID)
	j, err := d.store.JobGet(ctx, trainID)
	if err != nil {
		log.Error("load job for teardown", "err", err)
		return
	}
	if j.Status != job.StatusTearingDown {
		if j.Status == job.StatusQueued {
			d.endQueued(ctx, trainID, outcome.Status, outcome.Failure)
			return
		}
		if _, err := d.transition(ctx, trainID, job.StatusTearingDown, "destroying the stack", func(j *job.Job) {
			j.Internal.Outcome = outcome
		}); err != nil {
			log.Error("start teardown", "err", err)
			return
		}
	}
	d.failpoint(ctx, trainID, job.StatusTearingDown)
	d.sweepBeforeDestroy(ctx, j)
	var lastErr error
	for attempt := 1; attempt <= d.cfg.TeardownAttempts; attempt++ {
		actx, cancel := context.WithTimeout(ctx, d.cfg.TeardownTimeout)
		lastErr = d.prov.Teardown(actx, trainID, d.stackLog(ctx, trainID))
		cancel()
		if lastErr == nil {
			break
		}
		log.Warn("destroy stack", "attempt", attempt, "err", lastErr)
		d.event(ctx, trainID, "teardown_retry", job.StatusTearingDown,
			fmt.Sprintf("destroy attempt %d of %d failed: %s", attempt, d.cfg.TeardownAttempts, job.MessageOf(lastErr)), nil)
		if attempt < d.cfg.TeardownAttempts {
			time.Sleep(d.cfg.TeardownBackoff * time.Duration(1<<(attempt-1)))
		}
	}
	if lastErr == nil {
		sctx, cancel := context.WithTimeout(ctx, d.cfg.TeardownTimeout)
		d.sweep(sctx, j)
		cancel()
	}
	if lastErr != nil {
		outcome = &job.Outcome{Status: job.StatusFailed, Failure: &job.Failure{Code: job.ReasonTeardownFailed,
			Message: fmt.Sprintf("stack %s could not be destroyed after %d attempts (%s); an operator must run `pulumi destroy --stack %s`",
				trainID, d.cfg.TeardownAttempts, job.MessageOf(lastErr), trainID)}}
	}
	if err := removeKeys(d.cfg.DataDir, trainID); err != nil {
		log.Warn("remove job keys", "err", err)
	}
	msg := "stack destroyed"
	if lastErr != nil {
		msg = "stack NOT destroyed"
	}
	d.removeUnkeptCheckpoint(ctx, trainID)
	now := time.Now().UTC()
	if _, err := d.transition(ctx, trainID, outcome.Status, msg, func(j *job.Job) {
		j.Error = outcome.Failure
		reason, msg := string(outcome.Status), ""
		if outcome.Failure != nil {
			reason, msg = outcome.Failure.Code, outcome.Failure.Message
		}
		j.EndAttempt(now, reason, msg)
		j.ReleaseMachine(now)
		j.Internal.Outcome = nil
		// No machine will resume from it (removeUnkeptCheckpoint); read by EndAttempt first.
		j.Internal.LastCheckpoint = nil
	}); err != nil {
		log.Error("finish job", "err", err)
	}
}

// stackLog returns a sink for the engine's output lines that appends them to the job log.
func (d *Driver) stackLog(ctx context.Context, trainID string) func(string) {
	return func(line string) {
		if strings.TrimSpace(line) != "" {
			d.logLines(ctx, trainID, "pulumi", strings.TrimRight(line, "\n"))
		}
	}
}

// phaseErr gives err the phase's reason, unless err already carries a provider's own
// reason (no capacity, a bad key), which says more to the user.
func phaseErr(reason string, err error, msg string) error {
	if err == nil {
		return nil
	}
	if slices.Contains(job.ProviderReasons, job.ReasonOf(err)) {
		return err
	}
	m := msg
	if inner := job.MessageOf(err); inner != "internal error" {
		m = msg + ": " + inner
	}
	return &job.Error{Code: job.CodeOf(err), Reason: reason, Message: m, Err: err}
}

// work runs the phases from the job's current status through downloading. It returns nil
// once the weights are stored and verified.
func (d *Driver) work(ctx context.Context, trainID string, rs *runState) error {
	j, err := d.store.JobGet(ctx, trainID)
	if err != nil {
		return err
	}
	var signer ssh.Signer
	connectTimeout := d.cfg.ReconnectTimeout
	switch {
	case j.Status == job.StatusQueued:
		if err := d.admit(ctx, j); err != nil {
			return err
		}
		if _, err := d.transition(ctx, trainID, job.StatusProvisioning, "creating stack "+trainID+" on "+j.Provider, nil); err != nil {
			return err
		}
		fallthrough
	case j.Status == job.StatusProvisioning && j.Internal.Replacing:
		// A first machine, or a replacement for one taken away (its stack destroyed): made
		// afresh. A restart while a replacement is made converges the stack again.
		if j, err = d.provision(ctx, j); err != nil {
			return err
		}
		if signer, err = loadSigner(d.cfg.DataDir, trainID); err != nil {
			return phaseErr(job.ReasonProvisionFailed, err, "load the job's SSH key")
		}
		connectTimeout = d.cfg.ConnectTimeout
	case j.Status == job.StatusProvisioning:
		m, err := d.prov.Machine(ctx, trainID)
		if err != nil {
			return phaseErr(job.ReasonInterrupted, err, "the service stopped while provisioning and the machine could not be recovered")
		}
		if j, err = d.transition(ctx, trainID, job.StatusUploading, "recovered machine "+m.InstanceID+" after a restart", func(j *job.Job) {
			j.Machine = &m
			j.Internal.ProvisionedAt = time.Now().UTC()
			j.StartAttempt(m, j.Internal.ProvisionedAt)
		}); err != nil {
			return err
		}
	}
	// A job this process did not provision itself is resumed after a restart: its machine
	// may have gone meanwhile (an operator destroyed the stack), so the provider is asked at
	// the first failed dial instead of after InspectAfter.
	inspectAfter := d.cfg.InspectAfter
	if signer == nil {
		inspectAfter = 0
		if signer, err = loadSigner(d.cfg.DataDir, trainID); err != nil {
			return phaseErr(job.ReasonMachineLost, err, "the job's SSH key is gone")
		}
	}
	if j.Machine == nil {
		return &job.Error{Code: job.CodeInternal, Reason: job.ReasonMachineLost, Message: "the job has no machine recorded"}
	}
	m := *j.Machine
	_ = d.hold(j, m.HourlyPriceUSD, false)
	stopBudget := d.watchBudget(ctx, j, rs)
	defer stopBudget()
	if m.LeaseFile != "" {
		stop := d.keepLease(ctx, j, m, signer)
		defer stop()
	}
	// Until the first upload the machine may still be booting: a cloud image's sshd can
	// answer with keys of its own before the boot data installs the pinned one.
	sess, err := d.connect(ctx, j, m, signer, connectTimeout, rs.nudge, j.Status == job.StatusUploading, inspectAfter)
	if err != nil {
		return phaseErr(job.ReasonMachineLost, err, "reach the machine over SSH")
	}
	defer func() { sess.Close() }()

	for {
		switch j.Status {
		case job.StatusUploading:
			d.failpoint(ctx, trainID, job.StatusUploading)
			if err := d.upload(ctx, j, sess); err != nil {
				return phaseErr(job.ReasonUploadFailed, err, "upload the runtime and data")
			}
			if j, err = d.transition(ctx, trainID, job.StatusTraining, "training started", nil); err != nil {
				return err
			}
		case job.StatusTraining:
			d.failpoint(ctx, trainID, job.StatusTraining)
			if err := d.follow(ctx, trainID, m, signer, &sess, rs); err != nil {
				return err
			}
			// The weights are made: downloading them is not stopped for the budget.
			stopBudget()
			if j, err = d.transition(ctx, trainID, job.StatusDownloading, "training finished; downloading the weights", nil); err != nil {
				return err
			}
		case job.StatusDownloading:
			d.failpoint(ctx, trainID, job.StatusDownloading)
			return d.download(ctx, j, sess)
		default:
			return &job.Error{Code: job.CodeInternal, Reason: job.ReasonInternal, Message: "unexpected status " + string(j.Status)}
		}
	}
}

// provision makes the job's machine (its first, or a replacement) with fresh keys, and
// moves the job, in provisioning, to uploading.
func (d *Driver) provision(ctx context.Context, j *job.Job) (*job.Job, error) {
	trainID := j.TrainID
	keys, err := newJobKeys(d.cfg.DataDir, trainID)
	if err != nil {
		return nil, phaseErr(job.ReasonProvisionFailed, err, "create job keys")
	}
	req := MachineRequest{TrainID: trainID, EndpointID: j.EndpointID, Version: j.Version, Provider: j.Provider,
		AuthorizedKey: keys.AuthorizedKey, HostPrivateKey: keys.HostPrivatePEM, Options: options(j.Spec)}
	if d.cfg.MachineLease > 0 {
		req.LeaseSeconds = int(d.cfg.MachineLease.Seconds())
	}
	if j.MaxDurationSeconds > 0 {
		startedAt := time.Now()
		if t, ok := j.Timestamps[job.StatusProvisioning]; ok {
			startedAt = t
		}
		req.Deadline = startedAt.Add(time.Duration(j.MaxDurationSeconds) * time.Second)
	}
	m, err := d.prov.Provision(ctx, req, d.stackLog(ctx, trainID))
	if err != nil {
		return nil, phaseErr(job.ReasonProvisionFailed, err, "provision machine")
	}
	if err := d.hold(j, m.HourlyPriceUSD, true); err != nil {
		// Bill the machine for the moments it existed; teardown lets it go.
		_, _ = d.update(ctx, trainID, func(j *job.Job) error {
			j.Machine, j.Internal.ProvisionedAt = &m, time.Now().UTC()
			return nil
		})
		return nil, err
	}
	d.failpoint(ctx, trainID, job.StatusProvisioning)
	if m.HostKeyTrust == "first-use" {
		d.event(ctx, trainID, "host_key_first_use", job.StatusProvisioning,
			"the provider would not take the service's host key at boot; the key the machine presented first is pinned for the rest of the job: "+m.HostKey,
			map[string]any{"host_key": m.HostKey})
	}
	return d.transition(ctx, trainID, job.StatusUploading, fmt.Sprintf("machine %s is up at %s:%d", m.InstanceID, m.Host, m.Port), func(j *job.Job) {
		j.Machine = &m
		j.Internal.ProvisionedAt = time.Now().UTC()
		j.Internal.Replacing = false
		j.StartAttempt(m, j.Internal.ProvisionedAt)
	})
}

// connect dials the machine until it answers, timeout passes, or the host key is wrong.
// While the machine stays unreachable it asks the provider, every InspectAfter, whether the
// machine still runs, and gives up at once when it does not.
//
// inspectAfter is how long the machine may stay unreachable before the provider is asked
// whether it still exists.
//
// booting says the machine may still be booting: a host key mismatch is then retried until
// timeout (the other key is never accepted), because a cloud image's sshd can start with
// keys of its own before the machine's boot data installs the pinned one. Otherwise a
// mismatch ends the attempt at once.
func (d *Driver) connect(ctx context.Context, j *job.Job, m job.Machine, signer ssh.Signer, timeout time.Duration, nudge <-chan struct{}, booting bool, inspectAfter time.Duration) (Session, error) {
	started := time.Now()
	deadline := started.Add(timeout)
	nextInspect := started.Add(inspectAfter)
	backoff := 250 * time.Millisecond
	toldMismatch := false
	for {
		s, err := d.conn.Connect(ctx, m, signer)
		if err == nil {
			return s, nil
		}
		mismatch := errors.Is(err, sshrunner.ErrHostKeyMismatch)
		if mismatch && booting && !toldMismatch {
			toldMismatch = true
			d.event(ctx, j.TrainID, "host_key_pending", j.Status,
				"the machine presents another host key than the pinned one; waiting for its boot to install the pinned key (the other key is never trusted)", nil)
		}
		if ctx.Err() != nil || (job.CodeOf(err) == job.CodeFailedPrecondition && !(mismatch && booting)) || time.Now().After(deadline) {
			return nil, err
		}
		if time.Now().After(nextInspect) {
			if gone := d.machineGone(ctx, j); gone != nil {
				return nil, gone
			}
			nextInspect = time.Now().Add(d.cfg.InspectAfter)
		}
		select {
		case <-time.After(backoff):
		case <-nudge:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

func workDir(m job.Machine) string {
	if m.WorkDir != "" {
		return m.WorkDir
	}
	return "understudy-job"
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// upload lays out the job directory on the machine and starts the runtime detached.
func (d *Driver) upload(ctx context.Context, j *job.Job, sess Session) error {
	// Upload makes the directories it needs (over SFTP: no shell session, no login scripts).
	wd := workDir(*j.Machine)
	if err := sess.Upload(ctx, d.cfg.Runtime, path.Join(wd, "runtime")); err != nil {
		return err
	}
	if err := sess.UploadFile(ctx, j.Internal.DatasetPath, path.Join(wd, "data", "train.jsonl")); err != nil {
		return err
	}
	model := j.SLMType
	// A local model is read through its --model-root (no link out of it), checked again now.
	if fsys, done, ok, err := d.modelFS(j.SLMType); err != nil {
		return err
	} else if ok {
		err := sess.Upload(ctx, fsys, path.Join(wd, "model"))
		done()
		if err != nil {
			return err
		}
		model = "model"
	}
	token, err := d.completionToken(ctx, j.TrainID)
	if err != nil {
		return err
	}
	hp, _ := json.Marshal(j.Hyperparameters)
	if j.Hyperparameters == nil {
		hp = []byte("{}")
	}
	env := map[string]string{
		"UNDERSTUDY_TRAIN_ID": j.TrainID,
		"UNDERSTUDY_MODEL":    model,
		"UNDERSTUDY_HPARAMS":  string(hp),
	}
	if d.cfg.MaxAttempts > 1 {
		env["UNDERSTUDY_CHECKPOINT_EVERY_SECONDS"] = strconv.FormatFloat(d.cfg.CheckpointEvery.Seconds(), 'f', -1, 64)
	}
	if py := d.cfg.Python[j.Provider]; py != "" {
		env["UNDERSTUDY_PYTHON"] = py
	}
	if dir := d.cfg.RuntimeCache[j.Provider]; dir != "" {
		env["UNDERSTUDY_CACHE"] = dir
	}
	if d.cfg.CallbackURL != "" {
		env["UNDERSTUDY_CALLBACK_URL"] = strings.TrimRight(d.cfg.CallbackURL, "/") + "/api/v1/training/" + j.TrainID + "/completed"
		env["UNDERSTUDY_COMPLETION_TOKEN"] = token
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(env)) {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(env[k]))
	}
	if err := sess.Upload(ctx, fstest.MapFS{"job.env": {Data: []byte(b.String()), Mode: 0o600}}, wd); err != nil {
		return err
	}
	if err := d.restoreCheckpoint(ctx, j, sess); err != nil {
		return err
	}
	// exec: the run's process (the one Start waits for) is launch.sh itself, which outlives a
	// SIGTERM until the runtime has written its checkpoint; a shell in between would die first.
	return sess.Start(ctx, wd, "exec bash runtime/launch.sh", nil)
}

// completionToken returns the job's completion token, making and recording one the first
// time; the raw token lives only beside the job's key and on its machine.
func (d *Driver) completionToken(ctx context.Context, trainID string) (string, error) {
	p := filepath.Join(keysDir(d.cfg.DataDir), trainID, "completion-token")
	if raw, err := os.ReadFile(p); err == nil {
		return strings.TrimSpace(string(raw)), nil
	}
	tok, sum := newToken()
	if err := os.WriteFile(p, []byte(tok), 0o600); err != nil {
		return "", fmt.Errorf("store completion token: %w", err)
	}
	if _, err := d.update(ctx, trainID, func(j *job.Job) error {
		j.Internal.CompletionTokenSHA256 = sum
		return nil
	}); err != nil {
		return "", err
	}
	return tok, nil
}

// looksLocal reports whether slm_type names a local directory rather than a hub id.
func looksLocal(slm string) bool {
	p := strings.TrimPrefix(slm, "file://")
	return filepath.IsAbs(p) || strings.HasPrefix(slm, "file://") || strings.HasPrefix(slm, "./") || strings.HasPrefix(slm, "../")
}

// follow streams progress until the runtime exits, reconnecting when the SSH connection
// drops, and turns the exit into success or a failure with the runtime's own error code.
func (d *Driver) follow(ctx context.Context, trainID string, m job.Machine, signer ssh.Signer, sess *Session, rs *runState) error {
	j, err := d.store.JobGet(ctx, trainID)
	if err != nil {
		return err
	}
	f := &follower{d: d, ctx: ctx, trainID: trainID, offset: j.Internal.ProgressOffset, prog: j.Progress, lastFlush: time.Now()}
	if d.cfg.MaxAttempts > 1 {
		// Each checkpoint is copied off the machine as soon as it is written, so that a
		// replacement machine can resume from it; the copy never holds up the progress.
		kick, stop := d.pullCheckpoints(ctx, j, m, signer)
		defer stop()
		f.checkpointed = kick
	}
	wd := workDir(m)
	var code int
	for {
		code, err = (*sess).Follow(ctx, wd, f.offset, f.onLine)
		if ferr := f.flush(); ferr != nil && err == nil {
			err = ferr
		}
		if err == nil {
			break
		}
		if graceful(ctx) {
			return d.stopRuntime(ctx, trainID, m, signer, sess, f)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Whatever broke the stream, a machine its cloud took away is the cause to report.
		if gone := d.machineGone(ctx, j); gone != nil {
			return gone
		}
		if job.CodeOf(err) != job.CodeUnavailable {
			return phaseErr(job.ReasonMachineLost, err, "follow training")
		}
		d.log.Warn("lost the machine's connection; reconnecting", "train_id", trainID, "err", err)
		d.event(ctx, trainID, "reconnecting", job.StatusTraining, "lost the SSH connection; reconnecting", nil)
		(*sess).Close()
		ns, cerr := d.connect(ctx, j, m, signer, d.cfg.ReconnectTimeout, rs.nudge, false, d.cfg.InspectAfter)
		if cerr != nil {
			return phaseErr(job.ReasonMachineLost, cerr, "reconnect to the machine")
		}
		*sess = ns
	}
	// What the runtime wrote to stderr after its last streamed line (a crash's last words,
	// warnings at a clean exit), and after a failure how the bootstrap ended: the machine and
	// its files are about to go.
	tailCmd := stderrTail(wd)
	if code != progress.ExitOK {
		tailCmd += "; tail -c 2000 " + shellQuote(wd) + "/bootstrap.log 2>/dev/null"
	}
	if tail, _ := (*sess).Run(ctx, tailCmd); len(tail) > 0 {
		d.logLines(ctx, trainID, "stderr", strings.Split(strings.TrimRight(string(tail), "\n"), "\n")...)
	}
	if code != progress.ExitOK {
		reason, msg := job.ReasonTrainingFailed, fmt.Sprintf("the training runtime exited with code %d", code)
		if f.errEvent != nil {
			reason, msg = f.errEvent.Code, f.errEvent.Message
			if code == progress.ExitFailed || reason == "internal" {
				reason = job.ReasonTrainingFailed
				msg = f.errEvent.Code + ": " + f.errEvent.Message
			}
		}
		if code == progress.ExitPreempted {
			reason = job.ReasonPreempted
		}
		return &job.Error{Code: job.CodeFailedPrecondition, Reason: reason, Message: msg}
	}
	if f.done == nil {
		return &job.Error{Code: job.CodeInternal, Reason: job.ReasonTrainingFailed, Message: "the training runtime exited without reporting its output"}
	}
	expected := map[string]string{}
	for _, fl := range f.done.Files {
		expected[fl.Path] = fl.SHA256
	}
	_, err = d.update(ctx, trainID, func(j *job.Job) error {
		j.Internal.Expected = expected
		j.Internal.Metrics = f.done.Metrics
		return nil
	})
	return err
}

// follower folds progress lines into the job, writing to the store at most about once a
// second, and always writing the log before the offset so a restart repeats nothing lost.
type follower struct {
	d         *Driver
	ctx       context.Context
	trainID   string
	offset    int64
	prog      job.Progress
	pending   []store.LogLine
	dirty     bool
	lastFlush time.Time
	errEvent  *progress.Event
	done      *progress.Event
	// checkpointed, when set, is told of every checkpoint the runtime writes.
	checkpointed func()
}

func (f *follower) onLine(line []byte, end int64) error {
	f.offset = end
	f.dirty = true
	e, err := progress.Parse(line)
	if err == nil && e.Event == progress.EventLog && e.Stream == progress.StreamStderr {
		// A line of the runtime's stderr goes to the log as what it is, in its place among
		// the progress lines.
		f.pending = append(f.pending, store.LogLine{Time: time.Now().UTC(), Stream: "stderr", Text: e.Message})
	} else {
		f.pending = append(f.pending, store.LogLine{Time: time.Now().UTC(), Stream: "progress", Text: string(line)})
	}
	if err == nil {
		switch e.Event {
		case progress.EventStart:
			f.prog.TotalSteps = e.TotalSteps
			f.d.event(f.ctx, f.trainID, "training_started", job.StatusTraining,
				fmt.Sprintf("training %s on %s: %d pairs used, %d skipped", e.Model, e.Device, e.PairsUsed, e.PairsSkipped),
				map[string]any{"pairs_used": e.PairsUsed, "pairs_skipped": e.PairsSkipped, "device": e.Device, "resumed_from_step": e.ResumedFromStep})
		case progress.EventStep:
			f.prog.Step, f.prog.TotalSteps, f.prog.Epoch = e.Step, e.TotalSteps, e.Epoch
			f.prog.Loss, f.prog.TokensPerSecond, f.prog.ETASeconds = e.Loss, e.TokensPerSecond, e.ETASeconds
			f.prog.GPUUtilization, f.prog.GPUMemoryBytes = e.GPUUtilization, e.GPUMemoryBytes
		case progress.EventEval:
			f.prog.EvalLoss = e.EvalLoss
			f.d.event(f.ctx, f.trainID, "eval", job.StatusTraining, fmt.Sprintf("eval (%s) at step %d", e.Phase, e.Step),
				map[string]any{"eval_loss": e.EvalLoss, "perplexity": e.Perplexity, "phase": e.Phase, "step": e.Step})
		case progress.EventCheckpoint:
			f.d.event(f.ctx, f.trainID, "checkpoint", job.StatusTraining, fmt.Sprintf("checkpoint at step %d (%s)", e.Step, e.Reason), nil)
			if f.checkpointed != nil {
				f.checkpointed()
			}
		case progress.EventDone:
			ev := e
			f.done = &ev
		case progress.EventError:
			ev := e
			f.errEvent = &ev
		}
	}
	if time.Since(f.lastFlush) >= time.Second || len(f.pending) >= 500 {
		return f.flush()
	}
	return nil
}

// stderrTail is the shell command that prints what the job's log gets of stderr.log when the
// runtime has exited. The runtime streams its stderr as log events that say where each line ends in the
// file, so the log already holds all of it up to the last such event in progress.jsonl: what
// follows that (a hard crash's last words, torchrun's report after the protocol's last line)
// is printed. When the runtime streamed nothing (it died before it could), the file's tail is,
// as for a runtime that does not stream. Either is cut to its last 4000 bytes. The offset is
// read on the machine, not remembered here, so a service restart changes nothing.
func stderrTail(wd string) string {
	return "(cd " + shellQuote(wd) + " && { " +
		`off=$(grep -o '"stderr_offset":[0-9]*' progress.jsonl | tail -n 1 | cut -d: -f2); ` +
		`if [ -n "$off" ]; then tail -c +$((off + 1)) stderr.log; else tail -c 4000 stderr.log; fi; } 2>/dev/null | tail -c 4000)`
}

func (f *follower) flush() error {
	f.lastFlush = time.Now()
	if !f.dirty {
		return nil
	}
	if len(f.pending) > 0 {
		if _, err := f.d.store.LogAppend(f.ctx, f.trainID, f.pending); err != nil {
			return err
		}
		f.pending = f.pending[:0]
	}
	now := time.Now().UTC()
	j, err := f.d.update(f.ctx, f.trainID, func(j *job.Job) error {
		j.Progress = f.prog
		j.Internal.ProgressOffset = f.offset
		j.CostUSD = j.Cost(now)
		return nil
	})
	if err == nil {
		f.dirty = false
		f.d.notify(f.ctx, Change{Kind: ChangeProgress, Job: j})
	}
	return err
}

// download stores the weights, checks them against the runtime's own hashes, and records
// the manifest and weights_uri.
func (d *Driver) download(ctx context.Context, j *job.Job, sess Session) error {
	prefix := fmt.Sprintf("%s/v%d/%s", j.EndpointID, j.Version, j.TrainID)
	files, err := sess.Download(ctx, path.Join(workDir(*j.Machine), "out"), prefix, j.Internal.Expected)
	if err != nil {
		return phaseErr(job.ReasonDownloadFailed, err, "download the weights")
	}
	if len(files) == 0 {
		return &job.Error{Code: job.CodeFailedPrecondition, Reason: job.ReasonDownloadFailed, Message: "the machine's output directory is empty"}
	}
	uri := strings.TrimRight(d.cfg.WeightsURL, "/") + "/" + prefix + "/"
	_, err = d.update(ctx, j.TrainID, func(j *job.Job) error {
		j.WeightsURI = uri
		j.Manifest = &job.Manifest{Files: files, Metrics: j.Internal.Metrics}
		return nil
	})
	if err == nil {
		d.event(ctx, j.TrainID, "weights_stored", job.StatusDownloading, fmt.Sprintf("%d files stored and verified at %s", len(files), uri), nil)
	}
	return err
}
