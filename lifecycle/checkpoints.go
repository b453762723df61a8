package lifecycle

import (
	"context"
	"fmt"
	"strings"

	"gocloud.dev/gcerrors"

	"github.com/understudy-ai/training-service/job"
)

// removeCheckpoint deletes a stored checkpoint's files from the weights store, best effort:
// a file that cannot be deleted is logged and left (it costs storage, not correctness).
func (d *Driver) removeCheckpoint(ctx context.Context, trainID string, c *job.StoredCheckpoint) {
	if d.cfg.Weights == nil || c == nil {
		return
	}
	failed := 0
	for _, f := range c.Files {
		err := d.cfg.Weights.Delete(ctx, c.Prefix+"/"+f.Path)
		if err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			failed++
			d.log.Warn("remove a stored checkpoint file", "train_id", trainID, "key", c.Prefix+"/"+f.Path, "err", err)
		}
	}
	if failed > 0 {
		d.event(ctx, trainID, "checkpoint_not_removed", "",
			fmt.Sprintf("%d of %d files of the stored checkpoint %s could not be removed from the weights store", failed, len(c.Files), c.Name), nil)
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
