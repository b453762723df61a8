package lifecycle

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/job"
)

// A provider's own failure reason (no capacity, a bad key) reaches the job's error.
func TestProvisionKeepsProviderReason(t *testing.T) {
	h := newHarness(t, Config{})
	h.prov.provisionErr = &job.Error{Code: job.CodeResourceExhausted, Reason: job.ReasonNoCapacity,
		Message: "update stack nc: runpod: create pod: HTTP 400: There are no longer any instances available"}
	h.drv.Start(context.Background())
	h.submit("nc")
	j := h.waitFor("nc", job.StatusFailed)
	if j.Error == nil || j.Error.Code != job.ReasonNoCapacity || !strings.Contains(j.Error.Message, "no longer any instances") {
		t.Fatalf("error = %+v, want no_capacity with the provider's words", j.Error)
	}
	if h.prov.has("nc") {
		t.Fatal("stack left behind")
	}
}

// A start for a provider the service cannot use is refused before any job exists.
func TestSubmitRefusesWhatTheProviderCannotDo(t *testing.T) {
	h := newHarness(t, Config{})
	h.prov.checkErr = &job.Error{Code: job.CodeInvalidArgument, Reason: job.ReasonProviderNotConfigured,
		Message: "provider runpod is not configured on this service: RUNPOD_API_KEY (or RUNPOD_API_KEY_FILE) is not set"}
	_, _, err := h.drv.Submit(context.Background(), request("nope", 2))
	if job.ReasonOf(err) != job.ReasonProviderNotConfigured {
		t.Fatalf("Submit: %v, want %s", err, job.ReasonProviderNotConfigured)
	}
	if _, err := h.store.JobGet(context.Background(), "nope"); job.CodeOf(err) != job.CodeNotFound {
		t.Fatalf("a refused start stored a job: %v", err)
	}
}

// The request's machine options, the lease and the deadline reach the provisioner.
func TestProvisionRequestCarriesOptionsLeaseAndDeadline(t *testing.T) {
	h := newHarness(t, Config{MachineLease: 10 * time.Minute})
	h.drv.Start(context.Background())
	req := request("opts", 2)
	req.Spec.GPUType, req.Spec.Spot, req.Spec.OnDemandFallback = "NVIDIA H100 80GB HBM3", true, true
	req.Spec.MaxDurationSeconds = 3600
	before := time.Now()
	if _, _, err := h.drv.Submit(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	h.waitFor("opts", job.StatusCompleted)
	got := h.prov.lastReq
	if got.Options != (MachineOptions{GPUType: "NVIDIA H100 80GB HBM3", Spot: true, OnDemandFallback: true}) {
		t.Errorf("options = %+v", got.Options)
	}
	if got.LeaseSeconds != 600 {
		t.Errorf("lease = %d s, want 600", got.LeaseSeconds)
	}
	if d := got.Deadline.Sub(before); d < time.Hour-time.Second || d > time.Hour+10*time.Second {
		t.Errorf("deadline %v after submit, want an hour", d)
	}
}

// While it drives a job, the driver renews the lease of the machine's dead-man's switch.
func TestLeaseIsRenewedWhileTheJobRuns(t *testing.T) {
	h := newHarness(t, Config{MachineLease: 10 * time.Second})
	h.prov.leaseFile = "/w/lease-job/lease"
	h.conn.hold = make(chan struct{})
	h.drv.Start(context.Background())
	h.submit("lease-job")
	h.waitFor("lease-job", job.StatusTraining)
	deadline := time.Now().Add(10 * time.Second)
	renewals := 0
	for renewals < 2 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		h.conn.mu.Lock()
		renewals = 0
		for _, c := range h.conn.commands {
			if strings.Contains(c, "touch -- '/w/lease-job/lease'") {
				renewals++
			}
		}
		h.conn.mu.Unlock()
	}
	if renewals < 2 {
		t.Fatalf("%d lease renewals seen, want at least 2", renewals)
	}
	close(h.conn.hold)
	h.waitFor("lease-job", job.StatusCompleted)
}

// With replacement off (one attempt), a spot machine its cloud stopped ends the job as
// preempted at once, not after the reconnect timeout.
func TestPreemptedMachineEndsTheJob(t *testing.T) {
	h := newHarness(t, Config{ReconnectTimeout: time.Hour, MaxAttempts: 1})
	h.conn.dropForever = true
	h.prov.health = &MachineHealth{Exists: true, Running: false, Preempted: true, Status: "EXITED"}
	h.drv.Start(context.Background())
	h.submit("spot")
	j := h.waitFor("spot", job.StatusFailed)
	if j.Error == nil || j.Error.Code != job.ReasonPreempted || !strings.Contains(j.Error.Message, "EXITED") {
		t.Fatalf("error = %+v, want preempted", j.Error)
	}
	if h.prov.has("spot") {
		t.Fatal("stack left behind")
	}
}

// A machine terminated outside the service is machine_lost.
func TestMachineTerminatedOutsideIsLost(t *testing.T) {
	h := newHarness(t, Config{ReconnectTimeout: time.Hour, MaxAttempts: 1})
	h.conn.dropForever = true
	h.prov.health = &MachineHealth{}
	h.drv.Start(context.Background())
	h.submit("gone")
	j := h.waitFor("gone", job.StatusFailed)
	if j.Error == nil || j.Error.Code != job.ReasonMachineLost || !strings.Contains(j.Error.Message, "terminated outside") {
		t.Fatalf("error = %+v, want machine_lost", j.Error)
	}
}

// A machine that still runs is reconnected to, however long that takes.
func TestRunningMachineIsRedialled(t *testing.T) {
	h := newHarness(t, Config{})
	h.conn.dropOnce = true
	h.drv.Start(context.Background())
	h.submit("redial")
	h.waitFor("redial", job.StatusCompleted)
	if h.prov.inspects == 0 {
		t.Error("the provider was not asked about the machine after the connection dropped")
	}
}

// fakeInventory is a cloud account's machines and keys.
type fakeInventory struct {
	items   []CloudMachine
	removed []string
}

func (f *fakeInventory) List(ctx context.Context) ([]CloudMachine, error) {
	var out []CloudMachine
	for _, m := range f.items {
		if !slices.Contains(f.removed, m.ID) {
			out = append(out, m)
		}
	}
	return out, nil
}

func (f *fakeInventory) Remove(ctx context.Context, m CloudMachine) error {
	f.removed = append(f.removed, m.ID)
	return nil
}

// gc removes what the service made that no stack tracks, machines before keys, and leaves
// alone tracked machines, machines of jobs being provisioned and machines not of the
// service.
func TestCollectOrphans(t *testing.T) {
	inv := &fakeInventory{items: []CloudMachine{
		{Provider: "lambda", Kind: KindSSHKey, ID: "key-1", Name: "understudy-old"},
		{Provider: "lambda", Kind: "instance", ID: "i-old", Name: "understudy-old"},
		{Provider: "lambda", Kind: "instance", ID: "fake-live", Name: "understudy-live"},
		{Provider: "lambda", Kind: "instance", ID: "i-mine", Name: "my-notebook"},
		{Provider: "lambda", Kind: "instance", ID: "i-new", Name: "understudy-queued"},
	}}
	h := newHarness(t, Config{Inventories: map[string]Inventory{"lambda": inv}})
	h.prov.provisionWait = make(chan struct{})
	defer close(h.prov.provisionWait)
	h.drv.Start(context.Background())
	h.submit("queued")
	h.waitFor("queued", job.StatusProvisioning)
	// A stack that some other replica's live job owns, made after this driver's reaper ran.
	h.prov.mu.Lock()
	h.prov.stacks["live"] = true
	h.prov.mu.Unlock()

	orphans, err := h.drv.Orphans(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, o := range orphans {
		ids = append(ids, o.ID)
	}
	if strings.Join(ids, ",") != "i-old,key-1" {
		t.Fatalf("orphans = %v, want the untracked instance, then its key", ids)
	}
	res, err := h.drv.CollectOrphans(context.Background())
	if err != nil || len(res.Removed) != 2 || len(res.Failed) != 0 {
		t.Fatalf("collect: %+v %v", res, err)
	}
	if strings.Join(inv.removed, ",") != "i-old,key-1" {
		t.Fatalf("removed %v", inv.removed)
	}
}

// After a job's stack is destroyed, what its cloud still holds under the job's name (a
// machine whose create was interrupted) is removed.
func TestTeardownSweepsMachinesLeftUnderTheJobsName(t *testing.T) {
	inv := &fakeInventory{items: []CloudMachine{
		{Provider: "local", Kind: "instance", ID: "leaked", Name: "understudy-swept"},
		{Provider: "local", Kind: "instance", ID: "other", Name: "understudy-other"},
	}}
	h := newHarness(t, Config{Inventories: map[string]Inventory{"local": inv}})
	h.drv.Start(context.Background())
	h.submit("swept")
	h.waitFor("swept", job.StatusCompleted)
	if strings.Join(inv.removed, ",") != "leaked" {
		t.Fatalf("removed %v, want only the job's leftover", inv.removed)
	}
}
