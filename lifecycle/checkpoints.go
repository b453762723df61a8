package lifecycle

import (
	"context"
	"fmt"
	"strings"
	"time"

	"gocloud.dev/gcerrors"

	"github.com/understudy-ai/training-service/job"
)

// checkpointRemoveAttempts is how many times removeCheckpoint tries a file, waiting
// Config.CheckpointRemoveBackoff, then four times that, in between: a store's passing
// failure is ridden out, while the job's end (which waits for this) is held up by seconds,
// never by an outage.
const checkpointRemoveAttempts = 3

// removeCheckpoint deletes a stored checkpoint's files from the weights store, best effort:
// a file that still cannot be deleted after checkpointRemoveAttempts is logged, recorded as
// a checkpoint_not_removed event and left (it costs storage, not correctness).
func (d *Driver) removeCheckpoint(ctx context.Context, trainID string, c *job.StoredCheckpoint) {
	if d.cfg.Weights == nil || c == nil {
		return
	}
	pending := c.Files
	wait := d.cfg.CheckpointRemoveBackoff
	var lastErr error
	for attempt := 1; ; attempt++ {
		var failed []job.ManifestFile
		for _, f := range pending {
			err := d.cfg.Weights.Delete(ctx, c.Prefix+"/"+f.Path)
			if err != nil && gcerrors.Code(err) != gcerrors.NotFound {
				failed, lastErr = append(failed, f), err
			}
		}
		pending = failed
		if len(pending) == 0 || attempt == checkpointRemoveAttempts {
			break
		}
		d.log.Warn("remove a stored checkpoint: retrying", "train_id", trainID, "checkpoint", c.Name,
			"files_left", len(pending), "in", wait, "err", lastErr)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		if ctx.Err() != nil {
			break
		}
		wait *= 4
	}
	if len(pending) > 0 {
		d.log.Warn("remove a stored checkpoint", "train_id", trainID, "checkpoint", c.Name,
			"files_left", len(pending), "first", c.Prefix+"/"+pending[0].Path, "err", lastErr)
		d.event(ctx, trainID, "checkpoint_not_removed", "",
			fmt.Sprintf("%d of %d files of the stored checkpoint %s could not be removed from the weights store", len(pending), len(c.Files), c.Name), nil)
		return
	}
	d.log.Info("removed a stored checkpoint", "train_id", trainID, "checkpoint", c.Name, "files", len(c.Files))
}

// removeUnkeptCheckpoint deletes, as the job ends, the checkpoint copied off its machine for
// a replacement to resume from: no one will. The checkpoint a stopped job was asked to keep
// (keep_checkpoint, its checkpoint_uri) stays. The job's final write forgets it, so that the
// job does not change after the status its webhook reported.
func (d *Driver) removeUnkeptCheckpoint(ctx context.Context, trainID string) {
	j, err := d.store.JobGet(ctx, trainID)
	if err != nil || j.Internal.LastCheckpoint == nil {
		return
	}
	c := j.Internal.LastCheckpoint
	if j.CheckpointURI != strings.TrimRight(d.cfg.WeightsURL, "/")+"/"+c.Prefix+"/" {
		d.removeCheckpoint(ctx, trainID, c)
	}
}
