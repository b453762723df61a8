package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"path"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/job"
)

// replaceable reports whether err, the end of work, is a machine its provider took away
// (preempted, terminated, stopped) while the job's context still runs: such a machine is
// replaced, while attempts remain.
func (d *Driver) replaceable(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && errors.Is(err, errMachineTaken)
}

// replace starts replacing the job's machine, which cause says was taken away: it closes
// the machine's attempt and marks the job as replacing, then finishReplace destroys the
// stack and moves the job back to provisioning. When the job has used all its attempts it
// returns cause, saying so, and the job ends with cause's reason.
func (d *Driver) replace(ctx context.Context, trainID string, cause error) error {
	j, err := d.store.JobGet(ctx, trainID)
	if err != nil {
		return err
	}
	if j.Status != job.StatusUploading && j.Status != job.StatusTraining {
		return cause
	}
	reason, msg := job.ReasonOf(cause), job.MessageOf(cause)
	if inner := takenError(cause); inner != nil {
		// The provider's verdict, not the phase that met it (a reconnect).
		reason, msg = inner.Reason, inner.Message
	}
	used := max(len(j.Attempts), 1)
	if used >= d.cfg.MaxAttempts {
		plural := "s"
		if used == 1 {
			plural = ""
		}
		return &job.Error{Code: job.CodeOf(cause), Reason: reason, Err: cause,
			Message: fmt.Sprintf("%s; gave up after %d attempt%s (at most %d machines per job)", msg, used, plural, d.cfg.MaxAttempts)}
	}
	if _, err := d.update(ctx, trainID, func(j *job.Job) error {
		j.Internal.Replacing = true
		if n := len(j.Attempts); n > 0 && j.Attempts[n-1].EndedAt == nil {
			j.Attempts[n-1].Reason, j.Attempts[n-1].Message = reason, msg
		}
		return nil
	}); err != nil {
		return err
	}
	d.log.Warn("the job's machine was taken away; replacing it", "train_id", trainID, "reason", reason, "attempt", used)
	return d.finishReplace(ctx, trainID)
}

// finishReplace destroys the stack of a job whose machine was taken away (its attempt
// already closed, Internal.Replacing set) and moves the job to provisioning, where work
// makes a new machine. It runs again, from the start, after a restart.
func (d *Driver) finishReplace(ctx context.Context, trainID string) error {
	j, err := d.store.JobGet(ctx, trainID)
	if err != nil {
		return err
	}
	d.event(ctx, trainID, "machine_replacing", j.Status,
		fmt.Sprintf("destroying stack %s to replace machine %s (attempt %d of at most %d)", trainID, machineID(j), max(len(j.Attempts), 1), d.cfg.MaxAttempts), nil)
	var lastErr error
	for attempt := 1; attempt <= d.cfg.TeardownAttempts; attempt++ {
		actx, cancel := context.WithTimeout(ctx, d.cfg.TeardownTimeout)
		lastErr = d.prov.Teardown(actx, trainID, d.stackLog(ctx, trainID))
		cancel()
		if lastErr == nil || ctx.Err() != nil {
			break
		}
		d.log.Warn("destroy stack of a lost machine", "train_id", trainID, "attempt", attempt, "err", lastErr)
		if attempt < d.cfg.TeardownAttempts {
			time.Sleep(d.cfg.TeardownBackoff * time.Duration(1<<(attempt-1)))
		}
	}
	if lastErr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return phaseErr(job.ReasonProvisionFailed, lastErr, "destroy the stack of the lost machine")
	}
	sctx, cancel := context.WithTimeout(ctx, d.cfg.TeardownTimeout)
	d.sweep(sctx, j)
	cancel()
	firstProvisioned, hadFirst := j.Timestamps[job.StatusProvisioning]
	from := "the start: no checkpoint was stored"
	if c := j.Internal.LastCheckpoint; c != nil {
		from = fmt.Sprintf("checkpoint %s (step %d)", c.Name, c.Step)
	}
	now := time.Now().UTC()
	_, err = d.transition(ctx, trainID, job.StatusProvisioning,
		fmt.Sprintf("machine %s is gone; provisioning a new one to resume training from %s", machineID(j), from), func(j *job.Job) {
			if hadFirst {
				// max_duration_seconds counts from the first machine.
				j.Timestamps[job.StatusProvisioning] = firstProvisioned
			}
			j.EndAttempt(now, job.ReasonMachineLost, "")
			j.ReleaseMachine(now)
			j.Machine = nil
			j.Internal.ProgressOffset = 0
			j.Internal.Expected, j.Internal.Metrics = nil, nil
			j.Internal.Replacing = true
		})
	return err
}

// takenError returns the error machineGone made, found in err's chain.
func takenError(err error) *job.Error {
	for err != nil {
		var je *job.Error
		if !errors.As(err, &je) {
			return nil
		}
		if je.Err == errMachineTaken {
			return je
		}
		err = je.Err
	}
	return nil
}

func machineID(j *job.Job) string {
	if j.Machine == nil {
		return "(none recorded)"
	}
	return j.Machine.InstanceID
}

// restoreCheckpoint puts the job's last stored checkpoint into the machine's checkpoint
// directory, where the runtime's --resume finds it. A replacement machine without one
// starts over, and says so.
func (d *Driver) restoreCheckpoint(ctx context.Context, j *job.Job, sess Session) error {
	c := j.Internal.LastCheckpoint
	if c == nil {
		if len(j.Attempts) > 1 {
			d.event(ctx, j.TrainID, "training_from_scratch", j.Status,
				"no checkpoint of the earlier machine was stored: training starts again from the first step", nil)
		}
		return nil
	}
	dir := path.Join(workDir(*j.Machine), "ckpt", c.Name)
	if err := sess.Restore(ctx, c.Prefix, dir, c.Files); err != nil {
		return fmt.Errorf("restore checkpoint %s: %w", c.Name, err)
	}
	d.event(ctx, j.TrainID, "checkpoint_restored", j.Status,
		fmt.Sprintf("checkpoint %s (step %d) restored onto the machine: training resumes from it", c.Name, c.Step),
		map[string]any{"step": c.Step, "checkpoint": c.Name})
	return nil
}

// pullCheckpoints copies the machine's newest checkpoint into the weights store each time
// kick is called (kicks during a copy coalesce into one more), over a connection of its
// own, and records it as the job's LastCheckpoint. stop ends it, abandoning a copy under
// way (the checkpoint recorded before stays).
func (d *Driver) pullCheckpoints(ctx context.Context, j *job.Job, m job.Machine, signer ssh.Signer) (kick, stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	wake := make(chan struct{}, 1)
	done := make(chan struct{})
	jm := *j
	jm.Machine = &m
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-wake:
			}
			if err := d.pullCheckpoint(ctx, &jm, m, signer); err != nil && ctx.Err() == nil {
				d.log.Warn("copy the checkpoint off the machine", "train_id", j.TrainID, "err", err)
				d.event(ctx, j.TrainID, "checkpoint_not_stored", job.StatusTraining, "the newest checkpoint could not be copied off the machine: "+job.MessageOf(err), nil)
			}
		}
	}()
	kick = func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	return kick, func() {
		cancel()
		<-done
	}
}

func (d *Driver) pullCheckpoint(ctx context.Context, j *job.Job, m job.Machine, signer ssh.Signer) error {
	cur, err := d.store.JobGet(ctx, j.TrainID)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, d.cfg.TeardownTimeout)
	defer cancel()
	sess, err := d.conn.Connect(pctx, m, signer)
	if err != nil {
		return err
	}
	defer sess.Close()
	c, err := d.copyCheckpoint(pctx, j, sess, cur.Internal.LastCheckpoint)
	if err != nil || c == nil || c == cur.Internal.LastCheckpoint {
		return err
	}
	var superseded *job.StoredCheckpoint
	if _, err := d.update(ctx, j.TrainID, func(j *job.Job) error {
		superseded = nil
		if old := j.Internal.LastCheckpoint; old == nil || old.Step <= c.Step {
			superseded = old
			j.Internal.LastCheckpoint = c
		}
		return nil
	}); err != nil {
		return err
	}
	// Only the newest stored checkpoint is ever resumed from: the one it replaces goes.
	if superseded != nil && superseded.Prefix != c.Prefix {
		d.removeCheckpoint(ctx, j.TrainID, superseded)
	}
	d.event(ctx, j.TrainID, "checkpoint_copied", job.StatusTraining,
		fmt.Sprintf("checkpoint %s (step %d): %d files copied off the machine and verified", c.Name, c.Step, len(c.Files)),
		map[string]any{"step": c.Step, "checkpoint": c.Name})
	return nil
}
