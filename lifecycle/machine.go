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

// errMachineTaken marks the error of a machine its provider reports preempted, terminated or
// stopped: one the Driver may replace (a stack destroyed by an operator is not).
var errMachineTaken = errors.New("machine taken away")

// machineGone asks the provider whether the job's machine still runs. It returns the job's
// error when it does not: preempted for a spot machine its cloud stopped, machine_lost for
// one that is gone or stopped otherwise. It returns nil when the machine runs or the answer
// is unknown, so that the caller keeps trying to reach it.
func (d *Driver) machineGone(ctx context.Context, j *job.Job) error {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	h, err := d.prov.Inspect(ictx, j.TrainID, j.Provider)
	if job.CodeOf(err) == job.CodeNotFound {
		return &job.Error{Code: job.CodeFailedPrecondition, Reason: job.ReasonMachineLost,
			Message: "the job's stack no longer exists: it was destroyed outside the service"}
	}
	if err != nil {
		d.log.Warn("ask the provider about the machine", "train_id", j.TrainID, "provider", j.Provider, "err", err)
		return nil
	}
	data := map[string]any{"exists": h.Exists, "running": h.Running, "status": h.Status}
	var gone error
	switch {
	case h.Preempted:
		gone = &job.Error{Code: job.CodeFailedPrecondition, Reason: job.ReasonPreempted, Err: errMachineTaken,
			Message: fmt.Sprintf("the cloud interrupted the job's spot machine (status %s)", h.Status)}
	case !h.Exists:
		gone = &job.Error{Code: job.CodeFailedPrecondition, Reason: job.ReasonMachineLost, Err: errMachineTaken,
			Message: "the provider no longer has the job's machine: it was terminated outside the service"}
	case !h.Running:
		gone = &job.Error{Code: job.CodeFailedPrecondition, Reason: job.ReasonMachineLost, Err: errMachineTaken,
			Message: fmt.Sprintf("the job's machine no longer runs (status %s): it was stopped outside the service, or its dead-man's switch fired", h.Status)}
	}
	msg := "the provider reports the machine running"
	if gone != nil {
		msg = job.MessageOf(gone)
	}
	d.event(ctx, j.TrainID, "machine_inspected", j.Status, msg, data)
	return gone
}

// keepLease renews the lease of the machine's dead-man's switch (touches m.LeaseFile over a
// connection of its own) every fifth of the lease until the returned stop is called. A
// renewal that fails is retried at the next tick; the machine only acts after a whole lease
// without one.
func (d *Driver) keepLease(ctx context.Context, j *job.Job, m job.Machine, signer ssh.Signer) (stop func()) {
	every := d.cfg.MachineLease / 5
	if every < 2*time.Second {
		every = 2 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	cmd := "mkdir -p -- " + shellQuote(path.Dir(m.LeaseFile)) + " && touch -- " + shellQuote(m.LeaseFile)
	go func() {
		defer close(done)
		failures := 0
		for {
			if err := d.renewLease(ctx, m, signer, cmd); err != nil {
				failures++
				if ctx.Err() == nil && failures%3 == 0 {
					d.log.Warn("renew the machine's lease", "train_id", j.TrainID, "failures", failures, "err", err)
				}
			} else {
				failures = 0
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(every):
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

func (d *Driver) renewLease(ctx context.Context, m job.Machine, signer ssh.Signer, cmd string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := d.conn.Connect(ctx, m, signer)
	if err != nil {
		return err
	}
	defer s.Close()
	_, err = s.Run(ctx, cmd)
	return err
}
