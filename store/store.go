package store

import (
	"context"
	"time"

	"github.com/understudy-ai/training-service/job"
)

// Store is the persistence seam of the service.
type Store interface {
	// JobCreate stores a new job with Revision 1. A job with the same TrainID already
	// stored is a job.CodeAlreadyExists error.
	JobCreate(ctx context.Context, j *job.Job) error
	// JobGet returns the job or a job.CodeNotFound error.
	JobGet(ctx context.Context, trainID string) (*job.Job, error)
	// JobList returns jobs newest first (by CreatedAt, then TrainID) and the cursor of the
	// next page, "" on the last page.
	JobList(ctx context.Context, p JobListParams) ([]*job.Job, string, error)
	// JobUpdate writes j if the stored revision still equals j.Revision, then sets
	// j.Revision to the new revision. A stale revision is a job.CodeFailedPrecondition
	// error with reason "conflict"; a status change the transition table forbids is a
	// job.CodeFailedPrecondition error with reason "invalid_transition". Nothing is
	// written in either case.
	JobUpdate(ctx context.Context, j *job.Job) error
	// EventAppend records one lifecycle event and returns it with its ID set.
	EventAppend(ctx context.Context, e job.Event) (job.Event, error)
	// EventList returns a job's events oldest first.
	EventList(ctx context.Context, trainID string) ([]job.Event, error)
	// LogAppend appends lines to a job's log and returns the sequence number of the last.
	LogAppend(ctx context.Context, trainID string, lines []LogLine) (int64, error)
	// LogList returns up to limit log lines with Seq > after, oldest first.
	LogList(ctx context.Context, trainID string, after int64, limit int) ([]LogLine, error)
	// SessionRevoke records that the dashboard session id was signed out. The record is
	// kept until expires, when the session would have ended anyway, and may be forgotten
	// after.
	SessionRevoke(ctx context.Context, id string, expires time.Time) error
	// SessionRevoked says whether the session id was signed out and has not expired.
	SessionRevoked(ctx context.Context, id string) (bool, error)
	// Close releases the store.
	Close() error
}

// JobListParams filters and pages JobList. Zero values mean "any".
type JobListParams struct {
	Statuses   []job.Status
	EndpointID string
	// Limit is the page size; 0 means DefaultLimit, more than MaxLimit is MaxLimit.
	Limit  int
	Cursor string
}

// Page sizes of JobList.
const (
	DefaultLimit = 50
	MaxLimit     = 500
)

// LogLine is one line of a job's log: service messages and the runtime's progress.
type LogLine struct {
	Seq    int64     `json:"seq"`
	Time   time.Time `json:"time"`
	Stream string    `json:"stream"` // "service", "progress", "stderr", "pulumi"
	Text   string    `json:"text"`
}

// ErrConflict and friends are the reasons a JobUpdate can be refused.
const (
	ReasonConflict = "conflict"
)

// Conflict returns the error JobUpdate returns for a stale revision.
func Conflict(trainID string) error {
	return &job.Error{Code: job.CodeFailedPrecondition, Reason: ReasonConflict,
		Message: "job " + trainID + " was changed concurrently"}
}

// NotFound returns the error JobGet returns for an unknown job.
func NotFound(trainID string) error {
	return &job.Error{Code: job.CodeNotFound, Reason: "job_not_found", Message: "no job with train_id " + trainID}
}

// AlreadyExists returns the error JobCreate returns for a duplicate job.
func AlreadyExists(trainID string) error {
	return &job.Error{Code: job.CodeAlreadyExists, Reason: "job_exists", Message: "a job with train_id " + trainID + " already exists"}
}
