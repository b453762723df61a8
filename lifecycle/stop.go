package lifecycle

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/job"
)

// budgetExceeded is the cause of a job's context when the job reached a budget: its own
// max_cost_usd or the service's hourly cap. Its text is the job's client-visible message.
type budgetExceeded struct{ msg string }

func (e *budgetExceeded) Error() string { return e.msg }

// graceful reports whether the job's context ended for a reason that stops the runtime
// gracefully (SIGTERM, a checkpoint, a grace period) rather than leaving it running (a
// service shutdown) or not mattering any more.
func graceful(ctx context.Context) bool {
	if ctx.Err() == nil {
		return false
	}
	cause := context.Cause(ctx)
	var be *budgetExceeded
	return errors.Is(cause, errCancelRequested) || errors.Is(cause, errTimeout) || errors.As(cause, &be)
}

// stopRuntime stops a training run whose job was cancelled, timed out or reached its
// budget: it sends the runtime SIGTERM, follows its progress for up to StopGrace while the
// runtime writes a checkpoint and exits, kills it when it does not, and stores the last
// checkpoint when the job asked to keep it. It returns the job context's error, so that the
// job ends as its cause says; or errShutdown when the service is stopping meanwhile, so that
// the next start finishes the job.
func (d *Driver) stopRuntime(ctx context.Context, trainID string, m job.Machine, signer ssh.Signer, sess *Session, f *follower) error {
	result := ctx.Err()
	// The job's context is done: the stop runs on a context of its own, which a service
	// shutdown still ends.
	base, cancelBase := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelBase(nil)
	defer context.AfterFunc(d.baseCtx, func() { cancelBase(errShutdown) })()
	f.ctx = base
	log := d.log.With("train_id", trainID, "phase", "stopping")
	wd := workDir(m)

	gctx, cancel := context.WithTimeout(base, d.cfg.StopGrace)
	defer cancel()
	d.event(base, trainID, "stopping", job.StatusTraining,
		fmt.Sprintf("%s: asking the runtime to write a checkpoint and stop (SIGTERM, up to %s)", context.Cause(ctx), d.cfg.StopGrace), nil)
	err := (*sess).Signal(gctx, wd, "TERM")
	if err != nil && job.CodeOf(err) != job.CodeNotFound && gctx.Err() == nil {
		// The connection may have gone with the cancelled follow: dial once more.
		if ns, cerr := d.conn.Connect(gctx, m, signer); cerr == nil {
			(*sess).Close()
			*sess = ns
			err = ns.Signal(gctx, wd, "TERM")
		}
	}
	stopped := false
	switch {
	case job.CodeOf(err) == job.CodeNotFound || job.ReasonOf(err) == "process_lost":
		stopped = true // nothing runs there any more
	case err != nil:
		log.Warn("send SIGTERM to the runtime", "err", err)
	default:
		code, ferr := (*sess).Follow(gctx, wd, f.offset, f.onLine)
		if ferr == nil {
			stopped = true
			d.event(base, trainID, "runtime_stopped", job.StatusTraining, fmt.Sprintf("the runtime stopped (exit code %d)", code), map[string]any{"exit_code": code})
		} else {
			log.Warn("follow the stopping runtime", "err", ferr)
		}
	}
	if ferr := f.flush(); ferr != nil {
		log.Warn("record the stopping runtime's progress", "err", ferr)
	}
	if base.Err() != nil {
		return errShutdown
	}
	if !stopped {
		d.event(base, trainID, "runtime_killed", job.StatusTraining,
			fmt.Sprintf("the runtime did not stop within %s of SIGTERM; killing it", d.cfg.StopGrace), nil)
		kctx, kcancel := context.WithTimeout(base, 30*time.Second)
		if err := (*sess).Signal(kctx, wd, "KILL"); err != nil {
			log.Warn("send SIGKILL to the runtime", "err", err)
		}
		kcancel()
	}
	j, err := d.store.JobGet(base, trainID)
	if err != nil {
		log.Warn("load job", "err", err)
		return result
	}
	if j.KeepCheckpoint {
		cctx, ccancel := context.WithTimeout(base, d.cfg.TeardownTimeout)
		err := d.storeCheckpoint(cctx, j, *sess)
		ccancel()
		if base.Err() != nil {
			return errShutdown
		}
		if err != nil {
			log.Warn("store the last checkpoint", "err", err)
			d.event(base, trainID, "checkpoint_not_stored", job.StatusTraining, "the last checkpoint could not be stored: "+job.MessageOf(err), nil)
		}
	}
	return result
}

// checkpointName is the runtime's name of a complete checkpoint directory (checkpoint.py).
var checkpointName = regexp.MustCompile(`^step-[0-9]{8}$`)

// storeCheckpoint stores the newest complete checkpoint in the machine's checkpoint
// directory under <endpoint>/v<version>/<train_id>/checkpoint/<step>/ in the weights store,
// each file checked against the sha256 the machine computed before the copy, and records
// where. A job with no checkpoint (stopped before its first step) stores nothing.
func (d *Driver) storeCheckpoint(ctx context.Context, j *job.Job, sess Session) error {
	var known *job.StoredCheckpoint
	if cur, err := d.store.JobGet(ctx, j.TrainID); err == nil {
		known = cur.Internal.LastCheckpoint
	}
	c, err := d.copyCheckpoint(ctx, j, sess, known)
	if err != nil {
		return err
	}
	if c == nil {
		d.event(ctx, j.TrainID, "checkpoint_none", job.StatusTraining, "the runtime wrote no checkpoint before it stopped: nothing to keep", nil)
		return nil
	}
	uri := strings.TrimRight(d.cfg.WeightsURL, "/") + "/" + c.Prefix + "/"
	if _, err := d.update(ctx, j.TrainID, func(j *job.Job) error {
		j.CheckpointURI = uri
		j.CheckpointManifest = c.Files
		return nil
	}); err != nil {
		return err
	}
	d.event(ctx, j.TrainID, "checkpoint_stored", job.StatusTraining,
		fmt.Sprintf("checkpoint %s: %d files stored and verified at %s", c.Name, len(c.Files), uri), map[string]any{"checkpoint_uri": uri})
	return nil
}

// copyCheckpoint copies the newest complete checkpoint on the job's machine into the weights
// store under <endpoint>/v<version>/<train_id>/checkpoint/<name>/, each file checked against
// the sha256 the machine computed before the copy. It returns nil when the machine has no
// checkpoint, and known, without copying, when that is already the newest.
func (d *Driver) copyCheckpoint(ctx context.Context, j *job.Job, sess Session, known *job.StoredCheckpoint) (*job.StoredCheckpoint, error) {
	ckpt := path.Join(workDir(*j.Machine), "ckpt")
	// The newest step-* directory with its state file written last is complete (the runtime
	// writes into a temporary directory and renames it).
	out, err := sess.Run(ctx, `cd -- `+shellQuote(ckpt)+` 2>/dev/null || exit 0
for d in $(ls -d step-[0-9]* 2>/dev/null | sort -r); do
	[ -f "$d/trainer_state.json" ] || continue
	echo "$d"
	cd -- "$d" && { find . -type f -exec sha256sum -- {} + 2>/dev/null || true; }
	exit 0
done`)
	if err != nil {
		return nil, fmt.Errorf("find the last checkpoint: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	if !sc.Scan() {
		return nil, nil
	}
	name := strings.TrimSpace(sc.Text())
	if !checkpointName.MatchString(name) {
		return nil, fmt.Errorf("find the last checkpoint: unexpected name %q", name)
	}
	step, _ := strconv.Atoi(strings.TrimLeft(strings.TrimPrefix(name, "step-"), "0"))
	// Without sha256sum on the machine, Download still reads every stored file back.
	expected := map[string]string{}
	for sc.Scan() {
		sum, file, ok := strings.Cut(sc.Text(), "  ")
		if ok && len(sum) == 64 {
			expected[strings.TrimPrefix(file, "./")] = sum
		}
	}
	if known != nil && known.Name == name && sameFiles(known.Files, expected) {
		return known, nil
	}
	prefix := fmt.Sprintf("%s/v%d/%s/checkpoint/%s", j.EndpointID, j.Version, j.TrainID, name)
	files, err := sess.Download(ctx, path.Join(ckpt, name), prefix, expected)
	if err != nil {
		return nil, phaseErr(job.ReasonDownloadFailed, err, "download the checkpoint")
	}
	return &job.StoredCheckpoint{Name: name, Step: step, Prefix: prefix, Files: files}, nil
}

// sameFiles reports whether files are exactly expected (path → sha256).
func sameFiles(files []job.ManifestFile, expected map[string]string) bool {
	if len(files) != len(expected) || len(files) == 0 {
		return false
	}
	for _, f := range files {
		if expected[f.Path] != f.SHA256 {
			return false
		}
	}
	return true
}
