package lifecycle

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/understudy-ai/training-service/dataset"
	"github.com/understudy-ai/training-service/job"
)

// StartRequest is a validated start request: the spec and, when the data came inline, the
// pairs (otherwise Spec.DatasetURI names it).
type StartRequest struct {
	Spec  job.Spec
	Pairs []json.RawMessage
}

// Fingerprint is the sha256 of the request as the caller sent it, data included, so that a
// retried start is recognised as the same request.
func (r StartRequest) Fingerprint() string {
	s := r.Spec
	s.Fingerprint, s.DatasetSHA256 = "", ""
	h := sha256.New()
	enc := json.NewEncoder(h)
	enc.Encode(s)
	for _, p := range r.Pairs {
		// Re-encode each pair so whitespace and key order do not matter.
		var v any
		if json.Unmarshal(p, &v) == nil {
			enc.Encode(v)
		} else {
			h.Write(p)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Submit stores a new job and schedules it. It returns the job and whether it was created:
// the same request again returns the existing job, a different request for the same
// train_id is a job.CodeAlreadyExists error. A bad dataset is a job.CodeInvalidArgument
// error and stores nothing.
func (d *Driver) Submit(ctx context.Context, req StartRequest) (*job.Job, bool, error) {
	if looksLocal(req.Spec.SLMType) {
		if _, ok := localModelDir(req.Spec.SLMType); !ok {
			return nil, false, &job.Error{Code: job.CodeInvalidArgument, Reason: job.ReasonInvalidModel,
				Message: fmt.Sprintf("slm_type %q names a local model directory that does not exist on the service's host", req.Spec.SLMType)}
		}
	}
	fp := req.Fingerprint()
	if existing, err := d.store.JobGet(ctx, req.Spec.TrainID); err == nil {
		return sameOrConflict(existing, fp)
	} else if job.CodeOf(err) != job.CodeNotFound {
		return nil, false, err
	}
	if err := d.prov.Check(MachineRequest{TrainID: req.Spec.TrainID, Provider: req.Spec.Provider, Options: options(req.Spec)}); err != nil {
		return nil, false, err
	}

	tmp, err := os.CreateTemp(datasetsDir(d.cfg.DataDir), ".upload-*")
	if err != nil {
		return nil, false, fmt.Errorf("store dataset: %w", err)
	}
	defer os.Remove(tmp.Name())
	var res dataset.Result
	if req.Spec.DatasetURI != "" {
		r, err := dataset.OpenURI(ctx, req.Spec.DatasetURI)
		if err != nil {
			tmp.Close()
			return nil, false, err
		}
		res, err = dataset.Copy(ctx, tmp, r)
		r.Close()
		if err != nil {
			tmp.Close()
			return nil, false, err
		}
	} else {
		res, err = dataset.WritePairs(ctx, tmp, req.Pairs)
		if err != nil {
			tmp.Close()
			return nil, false, err
		}
	}
	if err := tmp.Close(); err != nil {
		return nil, false, fmt.Errorf("store dataset: %w", err)
	}
	if res.Records != req.Spec.TrainingPairsCount {
		return nil, false, &job.Error{Code: job.CodeInvalidArgument, Reason: "pairs_count_mismatch",
			Message: fmt.Sprintf("training_pairs_count is %d but the dataset holds %d pairs", req.Spec.TrainingPairsCount, res.Records)}
	}

	now := time.Now().UTC()
	spec := req.Spec
	spec.Fingerprint = fp
	spec.DatasetSHA256 = res.SHA256
	path := filepath.Join(datasetsDir(d.cfg.DataDir), spec.TrainID+".jsonl")
	j := &job.Job{
		Spec:       spec,
		Status:     job.StatusQueued,
		Timestamps: map[job.Status]time.Time{job.StatusQueued: now},
		CreatedAt:  now,
		UpdatedAt:  now,
		Internal:   job.Internal{DatasetPath: path, Owner: d.cfg.Owner},
	}
	// The dataset is in place before the job exists, so a driver never sees a job without it.
	if err := os.Link(tmp.Name(), path+".new"); err != nil {
		return nil, false, fmt.Errorf("store dataset: %w", err)
	}
	if err := d.store.JobCreate(ctx, j); err != nil {
		os.Remove(path + ".new")
		if job.CodeOf(err) == job.CodeAlreadyExists {
			if existing, gerr := d.store.JobGet(ctx, spec.TrainID); gerr == nil {
				return sameOrConflict(existing, fp)
			}
		}
		return nil, false, err
	}
	if err := os.Rename(path+".new", path); err != nil {
		return nil, false, fmt.Errorf("store dataset: %w", err)
	}
	d.event(ctx, j.TrainID, "status", job.StatusQueued, fmt.Sprintf("job accepted: %d pairs, dataset sha256 %s", res.Records, res.SHA256), nil)
	d.launch(j.TrainID)
	return j, true, nil
}

func options(s job.Spec) MachineOptions {
	return MachineOptions{GPUType: s.GPUType, Spot: s.Spot, OnDemandFallback: s.OnDemandFallback}
}

func sameOrConflict(existing *job.Job, fp string) (*job.Job, bool, error) {
	if existing.Fingerprint == fp {
		return existing, false, nil
	}
	return nil, false, &job.Error{Code: job.CodeAlreadyExists, Reason: "train_id_conflict",
		Message: fmt.Sprintf("a different job with train_id %s already exists", existing.TrainID)}
}

// Complete records the machine's own signal that training finished. token is the per-job
// completion token; a wrong one is a job.CodeUnauthenticated error. Repeating it is harmless.
func (d *Driver) Complete(ctx context.Context, trainID, token string, exitCode *int) (*job.Job, error) {
	j, err := d.store.JobGet(ctx, trainID)
	if err != nil {
		return nil, err
	}
	if j.Internal.CompletionTokenSHA256 == "" || !tokenMatches(token, j.Internal.CompletionTokenSHA256) {
		return nil, &job.Error{Code: job.CodeUnauthenticated, Reason: "invalid_completion_token", Message: "the completion token is not valid for this job"}
	}
	data := map[string]any{}
	if exitCode != nil {
		data["exit_code"] = *exitCode
	}
	if !j.Status.Terminal() {
		d.event(ctx, trainID, "completion_signal", j.Status, "the machine reported that training ended", data)
		d.Nudge(trainID)
	}
	return j, nil
}
