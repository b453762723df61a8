package store

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"

	"github.com/understudy-ai/training-service/job"
)

// jobRecord is the stored JSON of a job: the public fields plus the internal ones the API
// hides. Every driver stores this form, so a job means the same in each.
type jobRecord struct {
	job.Job
	Internal job.Internal `json:"internal"`
}

// EncodeJob returns the stored form of j (its revision apart, which drivers keep beside it).
func EncodeJob(j *job.Job) ([]byte, error) {
	data, err := json.Marshal(jobRecord{Job: *j, Internal: j.Internal})
	if err != nil {
		return nil, job.Wrap(job.CodeInternal, err, "encode job")
	}
	return data, nil
}

// DecodeJob reads a job EncodeJob wrote, with its stored revision.
func DecodeJob(data []byte, revision int64) (*job.Job, error) {
	var r jobRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, job.Wrap(job.CodeInternal, err, "decode job")
	}
	j := r.Job
	j.Internal = r.Internal
	j.Revision = revision
	return &j, nil
}

// EncodeCursor returns JobList's page cursor after the job created at ts (Unix ns) with
// that train_id; pages run newest first, train_ids in byte order within a time.
func EncodeCursor(ts int64, trainID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(ts, 10) + "|" + trainID))
}

// DecodeCursor reads a cursor EncodeCursor made; anything else is a job.CodeInvalidArgument
// error with reason "invalid_cursor".
func DecodeCursor(c string) (ts int64, trainID string, err error) {
	bad := &job.Error{Code: job.CodeInvalidArgument, Reason: "invalid_cursor", Message: "the page cursor is not valid"}
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return 0, "", bad
	}
	t, id, ok := strings.Cut(string(raw), "|")
	if !ok {
		return 0, "", bad
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil {
		return 0, "", bad
	}
	return n, id, nil
}

// PageLimit is the page size JobList serves for a requested limit: DefaultLimit for 0 or
// less, at most MaxLimit. Drivers read one job more, for Page.
func PageLimit(requested int) int {
	if requested <= 0 {
		return DefaultLimit
	}
	return min(requested, MaxLimit)
}

// Page cuts jobs, read newest first up to limit+1, to one page of limit, and returns the
// cursor of the next page ("" on the last).
func Page(jobs []*job.Job, limit int) ([]*job.Job, string) {
	if len(jobs) <= limit {
		return jobs, ""
	}
	jobs = jobs[:limit]
	last := jobs[len(jobs)-1]
	return jobs, EncodeCursor(last.CreatedAt.UnixNano(), last.TrainID)
}
