package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/provider/cloudapi"
	"github.com/understudy-ai/training-service/store"
)

// CloudMachine is something the service made at a cloud and pays for or must clean up: a
// machine, or a registered SSH key.
type CloudMachine struct {
	Provider       string  `json:"provider"`
	Kind           string  `json:"kind"` // "pod", "instance" or "ssh_key"
	ID             string  `json:"id"`
	Name           string  `json:"name"`
	Status         string  `json:"status,omitempty"`
	HourlyPriceUSD float64 `json:"hourly_price_usd,omitempty"`
}

// KindSSHKey is the kind of a registered SSH key; keys are removed after machines, which
// may still use them.
const KindSSHKey = "ssh_key"

// Inventory lists and removes, at one cloud, what carries the service's name prefix.
type Inventory interface {
	// List returns every machine and key at the cloud whose name begins with
	// programs.MachinePrefix and that still exists.
	List(ctx context.Context) ([]CloudMachine, error)
	// Remove terminates a machine or deletes a key. One that is already gone is success.
	Remove(ctx context.Context, m CloudMachine) error
}

// GCResult is what a garbage collection found and did.
type GCResult struct {
	Orphans []CloudMachine `json:"orphans"`
	Removed []CloudMachine `json:"removed,omitempty"`
	Failed  []GCFailure    `json:"failed,omitempty"`
}

// GCFailure is an orphan that could not be removed.
type GCFailure struct {
	CloudMachine
	Error string `json:"error"`
}

// Orphans lists what the service made at its clouds that no stack tracks: machines a crash
// or an interrupted create left behind. A job that is being provisioned right now is left
// out, since its machine may exist before its stack records it.
func (d *Driver) Orphans(ctx context.Context) ([]CloudMachine, error) {
	if len(d.cfg.Inventories) == 0 {
		return nil, nil
	}
	tracked, err := d.prov.ResourceIDs(ctx)
	if err != nil {
		return nil, job.Wrap(job.CodeOf(err), err, "read the stacks' resources: %s", job.MessageOf(err))
	}
	busy, err := d.provisioningNames(ctx)
	if err != nil {
		return nil, err
	}
	var out []CloudMachine
	for _, name := range sortedKeys(d.cfg.Inventories) {
		list, err := d.cfg.Inventories[name].List(ctx)
		if err != nil {
			// The cloud's own words (never a key) tell the operator what to fix.
			_, text := cloudapi.ParseMarker(err.Error())
			return nil, job.Wrap(job.CodeUnavailable, err, "list machines at %s: %s", name, text)
		}
		for _, m := range list {
			if _, ok := tracked[m.ID]; ok || busy[m.Name] || !strings.HasPrefix(m.Name, programs.MachinePrefix) {
				continue
			}
			out = append(out, m)
		}
	}
	// Machines first: a key cannot be deleted while a machine uses it.
	slices.SortStableFunc(out, func(a, b CloudMachine) int {
		return boolInt(a.Kind == KindSSHKey) - boolInt(b.Kind == KindSSHKey)
	})
	return out, nil
}

// CollectOrphans removes what Orphans finds.
func (d *Driver) CollectOrphans(ctx context.Context) (GCResult, error) {
	orphans, err := d.Orphans(ctx)
	if err != nil {
		return GCResult{}, err
	}
	res := GCResult{Orphans: orphans}
	for _, m := range orphans {
		if err := d.cfg.Inventories[m.Provider].Remove(ctx, m); err != nil {
			d.log.Error("remove orphaned machine", "provider", m.Provider, "kind", m.Kind, "id", m.ID, "name", m.Name, "err", err)
			res.Failed = append(res.Failed, GCFailure{CloudMachine: m, Error: err.Error()})
			continue
		}
		d.log.Warn("removed orphaned machine", "provider", m.Provider, "kind", m.Kind, "id", m.ID, "name", m.Name)
		res.Removed = append(res.Removed, m)
	}
	return res, nil
}

// provisioningNames are the cloud names of jobs between queued and uploading.
func (d *Driver) provisioningNames(ctx context.Context) (map[string]bool, error) {
	names := map[string]bool{}
	cursor := ""
	for {
		jobs, next, err := d.store.JobList(ctx, store.JobListParams{Statuses: []job.Status{job.StatusQueued, job.StatusProvisioning},
			Limit: store.MaxLimit, Cursor: cursor})
		if err != nil {
			return nil, err
		}
		for _, j := range jobs {
			names[programs.MachineName(j.TrainID)] = true
		}
		if next == "" {
			return names, nil
		}
		cursor = next
	}
}

// sweep removes what the job's cloud still holds under the job's name once its stack is
// gone: a machine whose create was interrupted before the stack recorded it.
func (d *Driver) sweep(ctx context.Context, j *job.Job) {
	inv, ok := d.cfg.Inventories[j.Provider]
	if !ok {
		return
	}
	list, err := inv.List(ctx)
	if err != nil {
		d.log.Warn("look for machines left under the job's name", "train_id", j.TrainID, "provider", j.Provider, "err", err)
		return
	}
	name := programs.MachineName(j.TrainID)
	var errs []error
	slices.SortStableFunc(list, func(a, b CloudMachine) int {
		return boolInt(a.Kind == KindSSHKey) - boolInt(b.Kind == KindSSHKey)
	})
	for _, m := range list {
		if m.Name != name {
			continue
		}
		if err := inv.Remove(ctx, m); err != nil {
			errs = append(errs, err)
			continue
		}
		d.event(ctx, j.TrainID, "machine_swept", job.StatusTearingDown,
			fmt.Sprintf("removed %s %s (%s) that the job's stack did not track", m.Kind, m.ID, m.Name), nil)
	}
	if err := errors.Join(errs...); err != nil {
		d.log.Error("remove machines left under the job's name", "train_id", j.TrainID, "err", err)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// sweepBeforeDestroy removes, before the job's stack is destroyed, the machines its cloud
// holds under the job's name that no stack tracks: a create interrupted before the stack
// recorded it (the service was killed while provisioning). They go first because the
// destroy cannot finish while one runs: a cloud refuses to delete the stack's registered
// key while a machine uses it, and the destroy waits on it for good. Only a job that never
// recorded its machine can have one.
func (d *Driver) sweepBeforeDestroy(ctx context.Context, j *job.Job) {
	inv, ok := d.cfg.Inventories[j.Provider]
	if !ok || j.Machine != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.TeardownTimeout)
	defer cancel()
	tracked, err := d.prov.ResourceIDs(ctx)
	if err != nil {
		d.log.Warn("read the stacks' resources before destroy", "train_id", j.TrainID, "err", err)
		return
	}
	list, err := inv.List(ctx)
	if err != nil {
		d.log.Warn("look for untracked machines under the job's name", "train_id", j.TrainID, "provider", j.Provider, "err", err)
		return
	}
	name := programs.MachineName(j.TrainID)
	for _, m := range list {
		if _, ok := tracked[m.ID]; ok || m.Name != name || m.Kind == KindSSHKey {
			continue
		}
		if err := inv.Remove(ctx, m); err != nil {
			d.log.Error("remove an untracked machine under the job's name", "train_id", j.TrainID, "id", m.ID, "err", err)
			continue
		}
		d.event(ctx, j.TrainID, "machine_swept", job.StatusTearingDown,
			fmt.Sprintf("removed %s %s (%s), made by an interrupted create that the job's stack did not record", m.Kind, m.ID, m.Name), nil)
	}
}
