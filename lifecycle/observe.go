package lifecycle

import (
	"context"
	"time"

	"github.com/understudy-ai/training-service/job"
)

// ChangeKind says what happened to a job an Observer is told about.
type ChangeKind string

const (
	// ChangeStatus: the job was created (From is empty) or moved From → Job.Status.
	ChangeStatus ChangeKind = "status"
	// ChangeResumed: a starting Driver took up a job a previous process left; its status did
	// not change.
	ChangeResumed ChangeKind = "resumed"
	// ChangeProgress: the runtime's progress (and the job's running cost) was stored.
	ChangeProgress ChangeKind = "progress"
)

// Change is one thing an Observer is told.
type Change struct {
	Kind ChangeKind
	// Job is the job as stored after the change. It is the observer's own copy: it may keep
	// it, and must not expect later changes to show in it.
	Job *job.Job
	// From is the status the job left (ChangeStatus only; empty for a new job).
	From job.Status
}

// Observer is told of every change the Driver stores: each status transition, in the order
// they happen for one job, each job it resumes at Start, and each progress update. It is how
// webhooks and metrics see jobs without the Driver knowing of either.
//
// JobChanged is called on the job's own goroutine after the change is stored. It must return
// quickly and must never block on the network or a slow consumer (queue the work instead): the
// job waits for it. A panic in it is recovered and logged. ctx carries no deadline of the
// observer's; it may already be cancelled when the job is being stopped.
type Observer interface {
	JobChanged(ctx context.Context, c Change)
}

// ObserverFunc adapts a function to an Observer.
type ObserverFunc func(ctx context.Context, c Change)

// JobChanged calls f.
func (f ObserverFunc) JobChanged(ctx context.Context, c Change) { f(ctx, c) }

// notify tells every observer of c, each with its own copy of the job.
func (d *Driver) notify(ctx context.Context, c Change) {
	if len(d.cfg.Observers) == 0 || c.Job == nil {
		return
	}
	for _, o := range d.cfg.Observers {
		c := c
		c.Job = cloneJob(c.Job)
		func() {
			defer func() {
				if v := recover(); v != nil {
					d.log.Error("job observer panicked", "train_id", c.Job.TrainID, "panic", v)
				}
			}()
			o.JobChanged(ctx, c)
		}()
	}
}

// cloneJob copies the parts of a job that a later write could change under an observer.
func cloneJob(j *job.Job) *job.Job {
	c := *j
	if j.Timestamps != nil {
		c.Timestamps = make(map[job.Status]time.Time, len(j.Timestamps))
		for k, v := range j.Timestamps {
			c.Timestamps[k] = v
		}
	}
	if j.Machine != nil {
		m := *j.Machine
		c.Machine = &m
	}
	if j.Error != nil {
		e := *j.Error
		c.Error = &e
	}
	c.Attempts = append([]job.Attempt(nil), j.Attempts...)
	return &c
}
