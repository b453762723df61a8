package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/servicetest"
)

// The cloud providers against their fakes: the real service binary, the real Pulumi engine
// with the in-repo provider, the fake RunPod and Lambda APIs, whose machines are real sshd's,
// and the real Python runtime on them. Every test ends with the fake holding no machine and
// no registered key.

var cloudProviders = []string{"runpod", "lambda"}

// cloudEnv is a service wired to a fake cloud.
type cloudEnv struct {
	t       *testing.T
	s       *servicetest.Service
	fake    *servicetest.Fake
	model   string
	dataset string
}

func newCloudEnv(t *testing.T, provider string, serveArgs []string, fakeArgs ...string) *cloudEnv {
	t.Helper()
	bin, python, model := servicetest.Prerequisites(t)
	s := servicetest.New(t, bin, python)
	fake := servicetest.StartFake(t, s, provider, fakeArgs...)
	s.Env = append(s.Env, fake.Env()...)
	s.Args = append(s.Args, serveArgs...)
	s.Start()
	return &cloudEnv{t: t, s: s, fake: fake, model: model, dataset: servicetest.WritePairs(t, 24)}
}

func (e *cloudEnv) start(id string, hp map[string]any, extra map[string]any) {
	e.t.Helper()
	body := startBody(id, e.model, e.dataset, 24, hp)
	body["provider"] = e.fake.Provider
	for k, v := range extra {
		body[k] = v
	}
	var out map[string]any
	if code := e.s.Request("POST", "/api/v1/training/start", body, &out); code != 202 {
		e.t.Fatalf("start %s: %d %v", id, code, out)
	}
}

func terminal(j servicetest.Job) bool {
	return j.Status == "completed" || j.Status == "failed" || j.Status == "cancelled"
}

// assertCloudTornDown checks that nothing of the job is left at the service or the fake.
func (e *cloudEnv) assertTornDown(id string) {
	e.t.Helper()
	if names := e.s.StackNames(); slices.Contains(names, id) {
		e.t.Errorf("stack %s still listed: %v", id, names)
	}
	if _, err := os.Stat(filepath.Join(e.s.Data, "keys", id)); !os.IsNotExist(err) {
		e.t.Errorf("key dir of %s still exists (%v)", id, err)
	}
	e.fake.AssertEmpty()
	for _, pid := range e.s.Processes() {
		if own, _ := e.s.Running(); pid == own || pid == e.fake.Pid() {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		e.t.Errorf("process %d of the data dir still runs: %q", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
}

var quickHP = map[string]any{"epochs": 1, "max_seq_len": 32, "batch_size": 8}

// slowHP keeps a job training long enough to act on it mid-training.
var slowHP = map[string]any{"epochs": 100, "max_seq_len": 32, "batch_size": 2}

func TestCloudJobCompletes(t *testing.T) {
	for _, provider := range cloudProviders {
		t.Run(provider, func(t *testing.T) {
			t.Parallel()
			e := newCloudEnv(t, provider, nil)
			id := "cloud-ok-" + provider
			e.start(id, quickHP, nil)
			j := e.s.WaitFor(id, 5*time.Minute, "a terminal status", terminal)
			if j.Status != "completed" {
				t.Fatalf("job ended %s: %+v", j.Status, j.Error)
			}
			if j.Machine == nil || j.Machine.HourlyPriceUSD <= 0 || j.Machine.GPU == "" || j.Machine.HostKeyTrust != "injected" ||
				!strings.HasSuffix(j.Machine.LeaseFile, "/"+id+"/lease") {
				t.Fatalf("machine %+v: want the real price, the GPU, the injected host key and a lease", j.Machine)
			}
			if j.CostUSD <= 0 {
				t.Errorf("cost_usd = %v, want the machine's price for the time it ran", j.CostUSD)
			}
			assertStoredFiles(t, readDir(strings.TrimPrefix(j.WeightsURI, "file://")), j.Manifest.Files)
			e.assertTornDown(id)
		})
	}
}

func TestCloudCancelMidTraining(t *testing.T) {
	for _, provider := range cloudProviders {
		t.Run(provider, func(t *testing.T) {
			t.Parallel()
			e := newCloudEnv(t, provider, nil)
			id := "cloud-cancel-" + provider
			e.start(id, slowHP, nil)
			e.s.WaitFor(id, 5*time.Minute, "training steps", func(j servicetest.Job) bool {
				return j.Status == "training" && j.Progress.Step >= 1
			})
			if code := e.s.Request("POST", "/api/v1/training/"+id+"/cancel", nil, nil); code != 202 {
				t.Fatalf("cancel: %d", code)
			}
			j := e.s.WaitFor(id, 3*time.Minute, "cancelled", terminal)
			if j.Status != "cancelled" {
				t.Fatalf("ended %s: %+v", j.Status, j.Error)
			}
			e.assertTornDown(id)
		})
	}
}

// RunPod is known to answer 500 to a create that made the pod: the client looks the
// machine up by name and uses it, so nothing leaks and the job completes.
func TestCloudCreate500ButCreatedLeaksNothing(t *testing.T) {
	for _, provider := range cloudProviders {
		t.Run(provider, func(t *testing.T) {
			t.Parallel()
			e := newCloudEnv(t, provider, nil, "--fault", "create-500-but-created")
			id := "cloud-500-" + provider
			e.start(id, quickHP, nil)
			j := e.s.WaitFor(id, 5*time.Minute, "a terminal status", terminal)
			if j.Status != "completed" {
				t.Fatalf("job ended %s: %+v", j.Status, j.Error)
			}
			if creates, _ := e.fake.Stats()["creates"].(float64); creates != 1 {
				t.Errorf("the fake made %v machines, want exactly 1", creates)
			}
			e.assertTornDown(id)
		})
	}
}

func TestCloudNoCapacity(t *testing.T) {
	for _, provider := range cloudProviders {
		t.Run(provider, func(t *testing.T) {
			t.Parallel()
			e := newCloudEnv(t, provider, nil, "--fault", "no-capacity")
			id := "cloud-nocap-" + provider
			e.start(id, quickHP, nil)
			j := e.s.WaitFor(id, 3*time.Minute, "a terminal status", terminal)
			if j.Status != "failed" || j.Error == nil || j.Error.Code != "no_capacity" {
				t.Fatalf("job ended %s with %+v, want failed with no_capacity", j.Status, j.Error)
			}
			t.Logf("no_capacity message: %s", j.Error.Message)
			if strings.Contains(j.Error.Message, "[understudy:") {
				t.Errorf("the message carries the internal marker: %q", j.Error.Message)
			}
			e.assertTornDown(id)
		})
	}
}

func TestCloudRateLimitedStillCompletes(t *testing.T) {
	for _, provider := range cloudProviders {
		t.Run(provider, func(t *testing.T) {
			t.Parallel()
			e := newCloudEnv(t, provider, nil, "--fault", "rate-limit")
			id := "cloud-429-" + provider
			e.start(id, quickHP, nil)
			j := e.s.WaitFor(id, 5*time.Minute, "a terminal status", terminal)
			if j.Status != "completed" {
				t.Fatalf("job ended %s: %+v", j.Status, j.Error)
			}
			statuses, _ := e.fake.Stats()["statuses"].(map[string]any)
			if n, _ := statuses["429"].(float64); n < 1 {
				t.Errorf("the fake answered no 429 (%v): the fault did not bite", statuses)
			}
			e.assertTornDown(id)
		})
	}
}

// A machine the cloud takes away mid-training, with no attempt left to replace it
// (--max-attempts 1), ends the job at once with a clear code: a RunPod spot pod interrupted
// is preempted; a Lambda instance terminated by the provider is machine_lost. (Replacement
// is in recovery_test.go.)
func TestCloudPreemption(t *testing.T) {
	want := map[string]string{"runpod": "preempted", "lambda": "machine_lost"}
	for _, provider := range cloudProviders {
		t.Run(provider, func(t *testing.T) {
			t.Parallel()
			e := newCloudEnv(t, provider, []string{"--max-attempts", "1"}, "--fault", "preempt-after=25s")
			id := "cloud-preempt-" + provider
			extra := map[string]any{}
			if provider == "runpod" {
				extra["spot"] = true
			}
			e.start(id, slowHP, extra)
			j := e.s.WaitFor(id, 5*time.Minute, "a terminal status", terminal)
			if j.Status != "failed" || j.Error == nil || j.Error.Code != want[provider] || !strings.Contains(j.Error.Message, "after 1 attempt") {
				t.Fatalf("job ended %s with %+v, want failed with %s after 1 attempt", j.Status, j.Error, want[provider])
			}
			if len(j.Attempts) != 1 || j.Attempts[0].Reason != want[provider] {
				t.Errorf("attempts %+v, want one ended %s", j.Attempts, want[provider])
			}
			e.assertTornDown(id)
		})
	}
}

func TestCloudServiceKilledMidTrainingResumes(t *testing.T) {
	for _, provider := range cloudProviders {
		t.Run(provider, func(t *testing.T) {
			t.Parallel()
			e := newCloudEnv(t, provider, nil)
			id := "cloud-restart-" + provider
			e.start(id, map[string]any{"epochs": 6, "max_seq_len": 32, "batch_size": 2}, nil)
			before := e.s.WaitFor(id, 5*time.Minute, "training steps", func(j servicetest.Job) bool {
				return j.Status == "training" && j.Progress.Step >= 1
			})
			e.s.Kill()
			if inv := e.fake.Inventory(); len(inv.Machines) != 1 {
				t.Fatalf("the machine did not outlive the service: %+v", inv)
			}
			e.s.Start()
			j := e.s.WaitFor(id, 5*time.Minute, "a terminal status", terminal)
			if j.Status != "completed" || j.Machine.InstanceID != before.Machine.InstanceID {
				t.Fatalf("after restart: %s %+v on %s (was %s)", j.Status, j.Error, j.Machine.InstanceID, before.Machine.InstanceID)
			}
			e.assertTornDown(id)
		})
	}
}

// The dead-man's switch: with the service gone past the machine's lease, the machine stops
// itself; the restarted service notices at once and, with no attempt left to replace the
// machine (--max-attempts 1), tears down what is left.
func TestCloudLeaseExpiresWhileTheServiceIsDown(t *testing.T) {
	t.Parallel()
	e := newCloudEnv(t, "runpod", []string{"--machine-lease", "12s", "--max-attempts", "1"})
	id := "cloud-lease"
	e.start(id, slowHP, nil)
	e.s.WaitFor(id, 5*time.Minute, "training steps", func(j servicetest.Job) bool {
		return j.Status == "training" && j.Progress.Step >= 1
	})
	e.s.Kill()
	e.fake.WaitInventory(2*time.Minute, "the machine to stop itself", func(inv servicetest.FakeInventory) bool {
		return len(inv.Machines) == 1 && strings.Contains(inv.Machines[0].StoppedReason, "lease")
	})
	e.s.Start()
	j := e.s.WaitFor(id, 2*time.Minute, "a terminal status", terminal)
	if j.Status != "failed" || j.Error == nil || j.Error.Code != "machine_lost" {
		t.Fatalf("job ended %s with %+v, want failed with machine_lost", j.Status, j.Error)
	}
	e.assertTornDown(id)
}

func TestCloudBadKeyIsProviderAuth(t *testing.T) {
	for _, provider := range cloudProviders {
		t.Run(provider, func(t *testing.T) {
			t.Parallel()
			e := newCloudEnv(t, provider, nil, "--fault", "auth")
			id := "cloud-auth-" + provider
			e.start(id, quickHP, nil)
			j := e.s.WaitFor(id, 3*time.Minute, "a terminal status", terminal)
			if j.Status != "failed" || j.Error == nil || j.Error.Code != "provider_auth" {
				t.Fatalf("job ended %s with %+v, want failed with provider_auth", j.Status, j.Error)
			}
			e.assertTornDown(id)
		})
	}
}

// A cloud that takes its time to delete: teardown waits until the machine is really gone
// before the job ends.
func TestCloudSlowDeleteIsWaitedFor(t *testing.T) {
	for _, provider := range cloudProviders {
		t.Run(provider, func(t *testing.T) {
			t.Parallel()
			e := newCloudEnv(t, provider, nil, "--fault", "slow-delete", "--slow-delete", "6s")
			id := "cloud-slowdel-" + provider
			e.start(id, quickHP, nil)
			j := e.s.WaitFor(id, 5*time.Minute, "a terminal status", terminal)
			if j.Status != "completed" {
				t.Fatalf("job ended %s: %+v", j.Status, j.Error)
			}
			// No grace period: the job is terminal only once the machine is gone.
			e.assertTornDown(id)
		})
	}
}

// `understudy-train stacks gc` lists a machine that carries the service's name but belongs
// to no stack, and --yes terminates it; an operator's own machine is left alone.
func TestCloudStacksGC(t *testing.T) {
	t.Parallel()
	e := newCloudEnv(t, "runpod", nil)
	for _, name := range []string{"understudy-leaked-job", "someone-elses-pod"} {
		body := fmt.Sprintf(`{"name":%q,"image":"runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2204","gpu":{"id":"NVIDIA GeForce RTX 4090","count":1},"ports":["22/tcp"]}`, name)
		cmd := exec.Command("curl", "-fsS", "-X", "POST", "-H", "Authorization: Bearer "+e.fake.Key, "-H", "Content-Type: application/json",
			"-d", body, e.fake.URL+"/v2/pods")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("create %s at the fake: %v\n%s", name, err, out)
		}
	}
	cli := func(args ...string) string {
		cmd := exec.Command(filepath.Join(os.Getenv("UNDERSTUDY_BIN"), "understudy-train"), args...)
		cmd.Env = append(os.Environ(), "UNDERSTUDY_URL=http://"+e.s.Addr, "UNDERSTUDY_API_TOKEN="+e.s.Token)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("understudy-train %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	list := cli("stacks", "gc")
	if !strings.Contains(list, "understudy-leaked-job") || strings.Contains(list, "someone-elses-pod") || !strings.Contains(list, "--yes") {
		t.Fatalf("stacks gc listed:\n%s", list)
	}
	if inv := e.fake.Inventory(); len(inv.Machines) != 2 {
		t.Fatalf("a listing terminated something: %+v", inv)
	}
	out := cli("stacks", "gc", "--yes")
	if !strings.Contains(out, "removed 1") {
		t.Fatalf("stacks gc --yes:\n%s", out)
	}
	inv := e.fake.Inventory()
	if len(inv.Machines) != 1 || inv.Machines[0].Name != "someone-elses-pod" {
		t.Fatalf("after gc the fake holds %+v, want only the operator's pod", inv)
	}
	// Clean up the operator's pod, so the fake ends empty.
	cmd := exec.Command("curl", "-fsS", "-X", "DELETE", "-H", "Authorization: Bearer "+e.fake.Key, e.fake.URL+"/v2/pods/"+inv.Machines[0].ID)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	e.fake.WaitInventory(30*time.Second, "no machines", func(inv servicetest.FakeInventory) bool { return len(inv.Machines) == 0 })
}

// An operator destroys a stuck job's stack from the repository root with the pinned CLI and
// the API key from the environment; the machine is terminated.
func TestCloudOperatorDestroysAStuckStack(t *testing.T) {
	t.Parallel()
	e := newCloudEnv(t, "lambda", nil)
	id := "cloud-stuck"
	e.start(id, slowHP, nil)
	e.s.WaitFor(id, 5*time.Minute, "training steps", func(j servicetest.Job) bool {
		return j.Status == "training" && j.Progress.Step >= 1
	})
	e.s.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := e.s.OperatorDestroy(ctx, id, e.fake.Env())
	if err != nil {
		t.Fatalf("pulumi destroy: %v\n%s", err, out)
	}
	e.fake.AssertEmpty()
	// The restarted service finds the stack gone and ends the job without waiting.
	e.s.Start()
	j := e.s.WaitFor(id, 2*time.Minute, "a terminal status", terminal)
	if j.Status != "failed" || j.Error == nil || j.Error.Code != "machine_lost" {
		t.Fatalf("job ended %s with %+v, want failed with machine_lost", j.Status, j.Error)
	}
	e.assertTornDown(id)
}

// When Lambda will not take user data, the instance cannot get the service's host key at
// boot: the key it presents first is pinned for the rest of the job, which says so.
func TestCloudHostKeyPinnedOnFirstUse(t *testing.T) {
	t.Parallel()
	e := newCloudEnv(t, "lambda", nil, "--fault", "no-user-data")
	id := "cloud-tofu"
	e.start(id, quickHP, nil)
	j := e.s.WaitFor(id, 5*time.Minute, "a terminal status", terminal)
	if j.Status != "completed" {
		t.Fatalf("job ended %s: %+v", j.Status, j.Error)
	}
	if j.Machine == nil || j.Machine.HostKeyTrust != "first-use" {
		t.Fatalf("machine %+v: want host_key_trust first-use", j.Machine)
	}
	var evs struct {
		Events []struct {
			Type string         `json:"type"`
			Data map[string]any `json:"data"`
		} `json:"events"`
	}
	e.s.Request("GET", "/api/v1/training/"+id+"/events", nil, &evs)
	recorded := false
	for _, ev := range evs.Events {
		recorded = recorded || (ev.Type == "host_key_first_use" && strings.HasPrefix(fmt.Sprint(ev.Data["host_key"]), "ssh-ed25519 "))
	}
	if !recorded {
		t.Errorf("no host_key_first_use event with the pinned key: %+v", evs.Events)
	}
	e.assertTornDown(id)
}
