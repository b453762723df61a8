package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/servicetest"
)

// The fault matrix: for every phase × every provider that runs here, the service is
// SIGKILLed in that phase and started again, and the job resumes or ends with its stack
// destroyed — no stack, machine, sshd, key or fake machine left.
//
// A failpoint (lifecycle/failpoint.go, armed only through the environment) holds the job
// where the phase begins; the service is killed there and restarted without it. Where the
// phase is in flight inside the engine or a cloud (a create the stack has not recorded yet,
// a delete the cloud is still carrying out), the fake cloud holds it instead: a long boot,
// a slow delete.

const failpointEnv = "UNDERSTUDY_FAILPOINT"

// faultCase is one cell of the matrix.
type faultCase struct {
	phase    string // the status the job is in when the service is killed
	variant  string // "" for the failpoint; how the fake holds the phase otherwise
	provider string
	fakeArgs []string
	// want is the job's end: "completed", or "failed:<code>".
	want string
}

func (c faultCase) name() string {
	n := c.phase
	if c.variant != "" {
		n += "-" + c.variant
	}
	return n + "/" + c.provider
}

func faultCases() []faultCase {
	var cases []faultCase
	// Every failpoint phase resumes: provisioning recovers the machine the stack reported
	// (the job had not recorded it yet), uploading uploads again, training follows the
	// detached run from the saved offset, downloading downloads again, tearing_down
	// destroys the stack and keeps the outcome it had.
	for _, phase := range []string{"provisioning", "uploading", "training", "downloading", "tearing_down"} {
		for _, provider := range []string{"local", "runpod", "lambda"} {
			cases = append(cases, faultCase{phase: phase, provider: provider, want: "completed"})
		}
	}
	for _, provider := range cloudProviders {
		// Killed while the cloud is still creating the machine: the stack holds a pending
		// create, not the machine. The restarted service cannot recover a machine the stack
		// never recorded: it fails the job as interrupted, drops the pending create,
		// destroys the stack and sweeps the machine the cloud made under the job's name.
		cases = append(cases, faultCase{phase: "provisioning", variant: "pending-create", provider: provider,
			fakeArgs: []string{"--boot-delay", "40s"}, want: "failed:interrupted"})
		// Killed while the cloud is still deleting the machine: the restarted service
		// destroys again and waits until the machine is gone, keeping the outcome.
		cases = append(cases, faultCase{phase: "tearing_down", variant: "slow-delete", provider: provider,
			fakeArgs: []string{"--fault", "slow-delete", "--slow-delete", "20s"}, want: "completed"})
	}
	return cases
}

// faultParallel is how many cases run at once. A case mostly waits (on the engine, a
// boot, a poll), so more run at once than -parallel allows on a two-core machine, which
// would run the matrix two by two; its waits stay generous for a loaded machine.
const faultParallel = 4

func TestFaultMatrix(t *testing.T) {
	t.Parallel()
	sem := make(chan struct{}, faultParallel)
	var wg sync.WaitGroup
	for _, c := range faultCases() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			// t.Run may be called from several goroutines at once; each case has its own
			// service, data dir and fake.
			t.Run(c.name(), func(t *testing.T) { runFaultCase(t, c) })
		}()
	}
	wg.Wait()
}

func runFaultCase(t *testing.T, c faultCase) {
	bin, python, model := servicetest.Prerequisites(t)
	s := servicetest.New(t, bin, python)
	var fake *servicetest.Fake
	if c.provider != "local" {
		fake = servicetest.StartFake(t, s, c.provider, c.fakeArgs...)
		s.Env = append(s.Env, fake.Env()...)
	}
	base := slices.Clone(s.Env)
	if c.variant == "" {
		s.Env = append(s.Env, failpointEnv+"=pause:"+c.phase)
	}
	s.Start()

	id := "fault-" + strings.ReplaceAll(c.phase, "_", "-") + "-" + c.provider
	if c.variant != "" {
		id = "fault-" + c.variant + "-" + c.provider
	}
	body := startBody(id, model, servicetest.WritePairs(t, 24), 24, quickHP)
	body["provider"] = c.provider
	if code := s.Request("POST", "/api/v1/training/start", body, nil); code != 202 {
		t.Fatalf("start %s: %d", id, code)
	}

	switch {
	case c.variant == "":
		waitFailpoint(t, s, id, c.phase)
		if c.phase == "provisioning" {
			// The machine is reported and the failpoint holds the job before it records
			// it; the update's own bookkeeping finishes meanwhile. Killed once the stack
			// has settled, the outcome does not depend on how far that had got.
			waitStackSettled(t, s, id)
		}
	case c.variant == "pending-create":
		fake.WaitInventory(3*time.Minute, "the cloud to be making the machine", func(inv servicetest.FakeInventory) bool {
			return len(inv.Machines) == 1
		})
		if j := s.Job(id); j.Status != "provisioning" {
			t.Fatalf("the job is %s while the cloud makes its machine, want provisioning", j.Status)
		}
	case c.variant == "slow-delete":
		s.WaitFor(id, 5*time.Minute, "the cloud to be deleting the machine", func(j servicetest.Job) bool {
			return j.Status == "tearing_down" && fakeDeletes(fake) > 0
		})
	}
	if j := s.Job(id); j.Status != c.phase {
		t.Fatalf("the job is %s when the service is killed, want %s", j.Status, c.phase)
	}
	s.Kill()
	if c.phase != "provisioning" && c.variant == "" {
		// Never lose: the machine outlives the service.
		if fake != nil {
			if inv := fake.Inventory(); len(inv.Machines) != 1 {
				t.Fatalf("the machine did not outlive the service: %+v", inv)
			}
		} else if len(s.Processes()) == 0 {
			t.Fatal("the job's machine died with the service")
		}
	}

	s.Env = base // restarted without the failpoint
	s.Start()
	j := s.WaitFor(id, 5*time.Minute, "a terminal status", terminal)
	got := j.Status
	if j.Error != nil {
		got += ":" + j.Error.Code
	}
	if got != c.want {
		t.Fatalf("after the restart the job ended %s (%+v), want %s", got, j.Error, c.want)
	}
	if !hasEvent(t, s, id, "resumed") {
		t.Errorf("no resumed event: the restarted service did not take the job up")
	}
	if j.Status == "completed" {
		assertWeights(t, j)
	}
	assertNothingLeft(t, s, fake, id)
}

// waitFailpoint waits until the job reports that the failpoint holds it in phase.
func waitFailpoint(t *testing.T, s *servicetest.Service, id, phase string) {
	t.Helper()
	s.WaitFor(id, 5*time.Minute, "the failpoint in "+phase, func(servicetest.Job) bool {
		return hasEvent(t, s, id, "failpoint")
	})
}

func hasEvent(t *testing.T, s *servicetest.Service, id, typ string) bool {
	t.Helper()
	var evs struct {
		Events []struct{ Type, Status string } `json:"events"`
	}
	if code := s.Request("GET", "/api/v1/training/"+id+"/events", nil, &evs); code != 200 {
		t.Fatalf("events of %s: %d", id, code)
	}
	for _, e := range evs.Events {
		if e.Type == typ {
			return true
		}
	}
	return false
}

// waitStackSettled waits until the job's stack exists and no update of it is in progress,
// as `pulumi stack ls` tells an operator.
func waitStackSettled(t *testing.T, s *servicetest.Service, id string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out := s.PulumiStackLs(ctx)
		cancel()
		var list []struct {
			Name             string `json:"name"`
			UpdateInProgress bool   `json:"updateInProgress"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatalf("pulumi stack ls: %v\n%s", err, out)
		}
		for _, st := range list {
			if st.Name == id && !st.UpdateInProgress {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("stack %s did not settle: %s", id, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// fakeDeletes counts the delete requests the fake has answered.
func fakeDeletes(f *servicetest.Fake) int {
	reqs, _ := f.Stats()["requests"].(map[string]any)
	n := 0
	for pattern, v := range reqs {
		if strings.HasPrefix(pattern, "DELETE /v2/pods/") || strings.HasSuffix(pattern, "/instance-operations/terminate") {
			c, _ := v.(float64)
			n += int(c)
		}
	}
	return n
}

// assertWeights checks every stored file against its manifest entry.
func assertWeights(t *testing.T, j servicetest.Job) {
	t.Helper()
	if j.Manifest == nil || j.WeightsURI == "" {
		t.Fatalf("completed without weights: %q %+v", j.WeightsURI, j.Manifest)
	}
	assertStoredFiles(t, readDir(strings.TrimPrefix(j.WeightsURI, "file://")), j.Manifest.Files)
}

// assertNothingLeft checks that nothing of the job is left: no stack (API and `pulumi
// stack ls`), no process of the data dir but the service and the fake, no job key, no
// worker directory, and the fake holding no machine and no registered key.
func assertNothingLeft(t *testing.T, s *servicetest.Service, fake *servicetest.Fake, id string) {
	t.Helper()
	if names := s.StackNames(); slices.Contains(names, id) {
		t.Errorf("stack %s still listed: %v", id, names)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if ls := s.PulumiStackLs(ctx); strings.Contains(ls, `"`+id+`"`) {
		t.Errorf("pulumi stack ls still shows %s:\n%s", id, ls)
	}
	own, _ := s.Running()
	for _, pid := range s.Processes() {
		if pid == own || fake != nil && pid == fake.Pid() {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		t.Errorf("process %d of the data dir still runs: %q", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
	if _, err := os.Stat(filepath.Join(s.Data, "keys", id)); !os.IsNotExist(err) {
		t.Errorf("key dir of %s still exists (%v)", id, err)
	}
	if entries, _ := os.ReadDir(s.Workers); len(entries) > 0 {
		t.Errorf("worker dirs left: %v", entries)
	}
	if fake != nil {
		fake.AssertEmpty()
	}
}
