package lifecycle

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/understudy-ai/training-service/dataset"
	"github.com/understudy-ai/training-service/job"
)

// StartRequest is a validated start request: the spec and, when the data came inline, the
// pairs (otherwise Spec.DatasetURI names it).
type StartRequest struct {
	Spec job.Spec
	// Pairs are inline pairs held in memory; PairsPath, when set, names a file that holds
	// them instead, one JSON value per line as the caller received them (the API spools a
	// request's pairs there while it reads the body). The caller removes that file.
	Pairs     []json.RawMessage
	PairsPath string
	// NoMaxDuration says the caller asked for no time limit (max_duration_seconds 0 given);
	// otherwise a Spec.MaxDurationSeconds of 0 takes Config.DefaultMaxDuration.
	NoMaxDuration bool
}

// Fingerprint is the sha256 of the request as the caller sent it, data included, so that a
// retried start is recognised as the same request. With PairsPath it reads that file.
func (r StartRequest) Fingerprint() string {
	fp, _ := r.fingerprint()
	return fp
}

func (r StartRequest) fingerprint() (string, error) {
	s := r.Spec
	s.Fingerprint, s.DatasetSHA256 = "", ""
	h := sha256.New()
	enc := json.NewEncoder(h)
	enc.Encode(s)
	// Re-encode each pair so whitespace and key order do not matter.
	add := func(p []byte) {
		var v any
		if json.Unmarshal(p, &v) == nil {
			enc.Encode(v)
		} else {
			h.Write(p)
		}
	}
	for _, p := range r.Pairs {
		add(p)
	}
	if r.PairsPath != "" {
		f, err := os.Open(r.PairsPath)
		if err != nil {
			return "", fmt.Errorf("read inline pairs: %w", err)
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 64<<10), dataset.MaxLineBytes+1)
		for sc.Scan() {
			if line := bytes.TrimSpace(sc.Bytes()); len(line) > 0 {
				add(line)
			}
		}
		if err := sc.Err(); err != nil {
			if errors.Is(err, bufio.ErrTooLong) {
				return "", &job.Error{Code: job.CodeInvalidArgument, Reason: dataset.ReasonInvalid,
					Message: fmt.Sprintf("a training pair is longer than %d bytes", dataset.MaxLineBytes)}
			}
			return "", fmt.Errorf("read inline pairs: %w", err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Submit stores a new job and schedules it. It returns the job and whether it was created:
// the same request again returns the existing job, a different request for the same
// train_id is a job.CodeAlreadyExists error. A bad dataset, a local path outside the
// configured roots or a Hub id that Config.Hub refuses is a job.CodeInvalidArgument error,
// a full queue (Config.MaxQueued) a job.CodeResourceExhausted one; either stores nothing.
func (d *Driver) Submit(ctx context.Context, req StartRequest) (*job.Job, bool, error) {
	if looksLocal(req.Spec.SLMType) {
		dir, err := d.localModel(req.Spec.SLMType)
		if err != nil {
			return nil, false, err
		}
		dir.Close()
	}
	fp, err := req.fingerprint()
	if err != nil {
		return nil, false, err
	}
	if existing, err := d.store.JobGet(ctx, req.Spec.TrainID); err == nil {
		return sameOrConflict(existing, fp)
	} else if job.CodeOf(err) != job.CodeNotFound {
		return nil, false, err
	}
	if err := d.prov.Check(MachineRequest{TrainID: req.Spec.TrainID, Provider: req.Spec.Provider, Options: options(req.Spec)}); err != nil {
		return nil, false, err
	}
	// After the look-up (a retried start needs no Hub) and before the queue and the
	// dataset: nothing is held while the Hub is asked.
	if err := d.checkHubModel(ctx, req.Spec.SLMType); err != nil {
		return nil, false, err
	}
	release, err := d.reserveQueue()
	if err != nil {
		return nil, false, err
	}
	defer release()

	tmp, err := os.CreateTemp(datasetsDir(d.cfg.DataDir), ".upload-*")
	if err != nil {
		return nil, false, fmt.Errorf("store dataset: %w", err)
	}
	defer os.Remove(tmp.Name())
	res, err := d.copyDataset(ctx, tmp, req)
	if err != nil {
		tmp.Close()
		return nil, false, err
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
	if spec.MaxDurationSeconds == 0 && !req.NoMaxDuration && d.cfg.DefaultMaxDuration > 0 {
		spec.MaxDurationSeconds = int(d.cfg.DefaultMaxDuration / time.Second)
	}
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
	d.notify(ctx, Change{Kind: ChangeStatus, Job: j})
	d.launch(j.TrainID)
	return j, true, nil
}

// copyDataset checks the request's data and writes it to w, within the dataset limits.
func (d *Driver) copyDataset(ctx context.Context, w io.Writer, req StartRequest) (dataset.Result, error) {
	lim := d.cfg.DatasetLimits
	var r io.Reader
	switch {
	case req.Spec.DatasetURI != "":
		rc, err := dataset.OpenURI(ctx, req.Spec.DatasetURI, &dataset.OpenOptions{Roots: d.cfg.DatasetRoots, MaxBytes: lim.MaxBytes})
		if err != nil {
			return dataset.Result{}, err
		}
		defer rc.Close()
		r = rc
	case req.PairsPath != "":
		f, err := os.Open(req.PairsPath)
		if err != nil {
			return dataset.Result{}, fmt.Errorf("read inline pairs: %w", err)
		}
		defer f.Close()
		r = f
	default:
		var buf bytes.Buffer
		for _, p := range req.Pairs {
			buf.Write(bytes.TrimSpace(p))
			buf.WriteByte('\n')
		}
		r = &buf
	}
	return dataset.CopyLimited(ctx, w, r, lim)
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
