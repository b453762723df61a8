package lifecycle

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/programs"
)

// orderedInventory records, for every removal, whether the job's stack still existed.
type orderedInventory struct {
	fakeInventory
	prov *fakeProvisioner
	id   string

	mu            sync.Mutex
	beforeDestroy []string
}

func (o *orderedInventory) Remove(ctx context.Context, m CloudMachine) error {
	o.mu.Lock()
	if o.prov.has(o.id) {
		o.beforeDestroy = append(o.beforeDestroy, m.ID)
	}
	o.mu.Unlock()
	return o.fakeInventory.Remove(ctx, m)
}

// A job that never recorded its machine (killed while provisioning) may have one the cloud
// made but the stack did not record; it is removed before the destroy, whose deletion of
// the registered key would otherwise wait on it for good. Tracked machines and keys are
// left to the destroy.
func TestUntrackedMachineIsRemovedBeforeTheDestroy(t *testing.T) {
	const id = "pend"
	name := programs.MachineName(id)
	h := newHarness(t, Config{})
	inv := &orderedInventory{prov: h.prov, id: id, fakeInventory: fakeInventory{items: []CloudMachine{
		{Provider: "local", Kind: KindSSHKey, ID: "key-1", Name: name},
		{Provider: "local", Kind: "instance", ID: "fake-" + id, Name: name}, // tracked by the stack
		{Provider: "local", Kind: "instance", ID: "i-pending", Name: name},
		{Provider: "local", Kind: "instance", ID: "i-other", Name: programs.MachineName("other")},
	}}}
	h.drv.Stop(context.Background())
	h.store.Close()
	h.open(Config{Inventories: map[string]Inventory{"local": inv}})
	h.prov.provisionErr = job.Errorf(job.CodeUnavailable, "interrupted")
	h.drv.Start(context.Background())
	h.submit(id)
	h.waitFor(id, job.StatusFailed)
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if !slices.Equal(inv.beforeDestroy, []string{"i-pending"}) {
		t.Fatalf("removed before the destroy: %v, want only the untracked machine", inv.beforeDestroy)
	}
	if slices.Contains(inv.removed, "i-other") {
		t.Fatalf("removed another job's machine: %v", inv.removed)
	}
}
