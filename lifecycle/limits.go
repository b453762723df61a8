package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/understudy-ai/training-service/internal/fsroot"
	"github.com/understudy-ai/training-service/job"
)

// Defaults of the limits in Config.
const (
	DefaultMaxDatasetBytes   = 1 << 30
	DefaultMaxDatasetRecords = 1_000_000
	DefaultMaxQueued         = 1000
)

// ReasonQueueFull is the reason of a start refused because MaxQueued jobs already wait.
const ReasonQueueFull = "queue_full"

// reserveQueue admits one more start unless MaxQueued jobs already wait for a machine slot:
// the job goroutines that hold no slot, plus the starts admitted and not yet launched. The
// caller calls the returned release once the job is launched (or refused).
func (d *Driver) reserveQueue() (release func(), err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	waiting := len(d.running) - len(d.sem) + d.pending
	if waiting >= d.cfg.MaxQueued {
		return nil, &job.Error{Code: job.CodeResourceExhausted, Reason: ReasonQueueFull,
			Message: fmt.Sprintf("%d jobs already wait for a machine, the most this service queues (serve --max-queued); try again later", d.cfg.MaxQueued)}
	}
	d.pending++
	return func() {
		d.mu.Lock()
		d.pending--
		d.mu.Unlock()
	}, nil
}

// localModel resolves a slm_type that names a local directory (an absolute path, ./ or
// ../, or file://) under one of the ModelRoots and opens it there; the directory is read
// through the returned os.Root, so a symbolic link that leads out of the model root is
// refused when the model is uploaded. The error is job.ReasonInvalidModel naming the flag.
func (d *Driver) localModel(slm string) (*os.Root, error) {
	invalid := func(msg string) error {
		return &job.Error{Code: job.CodeInvalidArgument, Reason: job.ReasonInvalidModel, Message: msg}
	}
	if len(d.cfg.ModelRoots) == 0 {
		return nil, invalid(fmt.Sprintf("slm_type %q names a local model directory, but local models are disabled on this service: use a Hugging Face id, or have an operator allow a directory with serve --model-root DIR", slm))
	}
	p, err := filepath.Abs(strings.TrimPrefix(slm, "file://"))
	if err != nil {
		return nil, invalid(fmt.Sprintf("slm_type %q is not a usable path", slm))
	}
	root, rel, err := fsroot.Open(d.cfg.ModelRoots, p)
	if errors.Is(err, fsroot.ErrOutside) {
		return nil, invalid(fmt.Sprintf("slm_type %q is not under a directory this service takes models from (serve --model-root)", slm))
	}
	if err != nil {
		return nil, invalid(fmt.Sprintf("slm_type %q names a local model directory that cannot be opened on the service's host", slm))
	}
	defer root.Close()
	dir, err := root.OpenRoot(rel)
	switch {
	case fsroot.Escaped(err):
		return nil, invalid(fmt.Sprintf("slm_type %q leads out of the directories this service takes models from (serve --model-root)", slm))
	case err != nil:
		return nil, invalid(fmt.Sprintf("slm_type %q names a local model directory that does not exist on the service's host", slm))
	}
	return dir, nil
}

// modelFS is the local model directory of slm_type as a file system confined to it, and a
// func to close it; ok is false when slm_type is a hub id.
func (d *Driver) modelFS(slm string) (fsys fs.FS, closeFn func(), ok bool, err error) {
	if !looksLocal(slm) {
		return nil, nil, false, nil
	}
	dir, err := d.localModel(slm)
	if err != nil {
		return nil, nil, true, err
	}
	return dir.FS(), func() { dir.Close() }, true, nil
}

// UploadDir is where a caller spools inline training data while it reads a start request
// (StartRequest.PairsPath): beside the datasets, so that it never sits in memory.
func (d *Driver) UploadDir() string { return datasetsDir(d.cfg.DataDir) }

// removeDatasetIfEnded deletes the job's copy of its dataset once the job is terminal: the
// data was only ever needed to upload it to the machine.
func (d *Driver) removeDatasetIfEnded(trainID string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(d.baseCtx), 30*time.Second)
	defer cancel()
	j, err := d.store.JobGet(ctx, trainID)
	if err != nil || !j.Status.Terminal() {
		return
	}
	d.removeDataset(trainID)
}

func (d *Driver) removeDataset(trainID string) {
	p := filepath.Join(datasetsDir(d.cfg.DataDir), trainID+".jsonl")
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("remove job dataset", "train_id", trainID, "err", err)
	}
}

// sweepDatasets deletes, at start, the dataset copies of jobs that are terminal or unknown
// (a service stopped before it could delete them) and uploads that a stopped service left
// half written.
func (d *Driver) sweepDatasets(ctx context.Context) {
	entries, err := os.ReadDir(datasetsDir(d.cfg.DataDir))
	if err != nil {
		d.log.Warn("sweep datasets", "err", err)
		return
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".new") {
			// .upload-*, .pairs-* and <id>.jsonl.new: a start in flight writes these, so
			// only old ones go.
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Hour {
				os.Remove(filepath.Join(datasetsDir(d.cfg.DataDir), name))
			}
			continue
		}
		id, ok := strings.CutSuffix(name, ".jsonl")
		if !ok {
			continue
		}
		j, err := d.store.JobGet(ctx, id)
		switch {
		case err == nil && j.Status.Terminal(), job.CodeOf(err) == job.CodeNotFound:
			d.removeDataset(id)
		}
	}
}
