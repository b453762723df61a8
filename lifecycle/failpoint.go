package lifecycle

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/understudy-ai/training-service/job"
)

// FailpointEnv names the environment variable that arms failpoints: a test hook that
// pauses every job on entering a phase, so that an end-to-end test can kill the service
// exactly there. It is read once, when the Driver is made, and nothing a client sends
// reaches it. The value is a comma-separated list of pause:<phase>, where the phase is one
// of failpointPhases ("pause:training").
const FailpointEnv = "UNDERSTUDY_FAILPOINT"

// failpointPhases are the phases a failpoint can pause, each hooked where the phase
// begins: provisioning right after the stack reported the machine (before the job records
// it), tearing_down before the stack is destroyed, the others before their work.
var failpointPhases = []job.Status{job.StatusProvisioning, job.StatusUploading, job.StatusTraining,
	job.StatusDownloading, job.StatusTearingDown}

// failpoints are the armed failpoints; the zero value arms none.
type failpoints struct {
	pause map[job.Status]bool
}

// parseFailpoints reads the value of FailpointEnv. A value it does not understand is an
// error, so that a mistyped test hook fails loudly instead of never firing.
func parseFailpoints(spec string) (failpoints, error) {
	var fp failpoints
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		action, phase, _ := strings.Cut(item, ":")
		if action != "pause" || !slices.Contains(failpointPhases, job.Status(phase)) {
			return failpoints{}, fmt.Errorf("parse %s: %q is not pause:<phase> with a phase of %v", FailpointEnv, item, failpointPhases)
		}
		if fp.pause == nil {
			fp.pause = map[job.Status]bool{}
		}
		fp.pause[job.Status(phase)] = true
	}
	return fp, nil
}

// armed lists the armed failpoints, for the log.
func (fp failpoints) armed() []string {
	var out []string
	for _, p := range failpointPhases {
		if fp.pause[p] {
			out = append(out, "pause:"+string(p))
		}
	}
	return out
}

// failpoint is the hook at the start of a phase: when a pause is armed for phase it
// records a "failpoint" event and blocks until ctx or the Driver ends. Unarmed, it
// returns at once.
func (d *Driver) failpoint(ctx context.Context, trainID string, phase job.Status) {
	if !d.fp.pause[phase] {
		return
	}
	d.log.Warn("failpoint: paused", "train_id", trainID, "phase", string(phase))
	d.event(ctx, trainID, "failpoint", phase, "failpoint: paused in "+string(phase), nil)
	select {
	case <-ctx.Done():
	case <-d.baseCtx.Done():
	}
}
