package sqlite

import "github.com/understudy-ai/training-service/job"

// jobRecord is the stored JSON of a job: the public fields plus the internal ones the
// API hides.
type jobRecord struct {
	job.Job
	Internal job.Internal `json:"internal"`
}

func record(j *job.Job) jobRecord { return jobRecord{Job: *j, Internal: j.Internal} }

func (r jobRecord) job() *job.Job {
	j := r.Job
	j.Internal = r.Internal
	return &j
}
