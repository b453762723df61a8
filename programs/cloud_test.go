package programs_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/programs/programtest"
)

func TestRunPodConformance(t *testing.T) { programtest.Run(t, runPodHarness) }

func TestLambdaConformance(t *testing.T) { programtest.Run(t, lambdaHarness) }

var runPodHarness = programtest.Harness{
	Provider: "runpod",
	Configure: func(t *testing.T, spec *programs.Spec) {
		spec.RunPod = programs.RunPodConfig{APIURL: "https://api.runpod.example", Cloud: "SECURE"}
		spec.LeaseSeconds = 900
	},
	NewResource: fakeRunPodPod,
	NoFirewall:  "a RunPod pod exposes only its sshd's mapped port; RunPod has no firewall API",
	Spot:        boolInput(programs.RunPodPodType, "spot"),
	CloudNames:  map[string][]string{programs.RunPodPodType: {"name"}},
	// The in-repo provider renders the pod's environment from this input.
	BootData: inputOf(programs.RunPodPodType, "hostPrivateKey"),
	Invalid: map[string]func(*programs.Spec){
		"bad cloud":          func(s *programs.Spec) { s.RunPod.Cloud = "MOON" },
		"relative work dir":  func(s *programs.Spec) { s.RunPod.WorkDir = "workspace" },
		"operator key junk":  func(s *programs.Spec) { s.RunPod.OperatorKey = "not a key" },
		"too many GPUs":      func(s *programs.Spec) { s.RunPod.GPUCount = 9 },
		"gpu type multiline": func(s *programs.Spec) { s.Machine.GPUType = "A\nB" },
	},
}

var lambdaHarness = programtest.Harness{
	Provider: "lambda",
	Configure: func(t *testing.T, spec *programs.Spec) {
		spec.Lambda = programs.LambdaConfig{APIURL: "https://lambda.example/api/v1"}
		spec.LeaseSeconds = 900
	},
	NewResource: fakeLambda,
	NoFirewall:  "Lambda Cloud's firewall is account-wide, not per instance; the program makes none",
	NoSpot:      "Lambda Cloud has no spot instances; Validate refuses spot",
	CloudNames:  map[string][]string{programs.LambdaSSHKeyType: {"name"}, programs.LambdaInstanceType: {"name"}},
	// The in-repo provider renders the instance's cloud-init from this input.
	BootData: inputOf(programs.LambdaInstanceType, "hostPrivateKey"),
	Invalid: map[string]func(*programs.Spec){
		"spot":               func(s *programs.Spec) { s.Machine.Spot = true },
		"bad instance type":  func(s *programs.Spec) { s.Machine.GPUType = "NVIDIA H100" },
		"relative work dir":  func(s *programs.Spec) { s.Lambda.WorkDir = "understudy" },
		"port out of range":  func(s *programs.Spec) { s.Lambda.SSHPort = 70000 },
		"long operator name": func(s *programs.Spec) { s.Lambda.OperatorKeyName = strings.Repeat("k", 65) },
	},
}

// inputOf extracts the input key of the first registered resource of type typ.
func inputOf(typ, key string) func([]pulumi.MockResourceArgs) (resource.PropertyValue, error) {
	return func(regs []pulumi.MockResourceArgs) (resource.PropertyValue, error) {
		for _, r := range regs {
			if r.TypeToken == typ {
				v, ok := r.Inputs[resource.PropertyKey(key)]
				if !ok {
					return resource.PropertyValue{}, fmt.Errorf("%s has no %s input", typ, key)
				}
				return v, nil
			}
		}
		return resource.PropertyValue{}, fmt.Errorf("no %s registered", typ)
	}
}

// boolInput extracts the bool input key of the first registered resource of type typ.
func boolInput(typ, key string) func([]pulumi.MockResourceArgs) (bool, error) {
	return func(regs []pulumi.MockResourceArgs) (bool, error) {
		v, err := inputOf(typ, key)(regs)
		if err != nil {
			return false, err
		}
		if !v.IsBool() {
			return false, fmt.Errorf("%s input %s is %s", typ, key, v.TypeString())
		}
		return v.BoolValue(), nil
	}
}

func secretString(v resource.PropertyValue) (string, error) {
	if v.IsSecret() {
		v = v.SecretValue().Element
	}
	if !v.IsString() {
		return "", errors.New("not a string")
	}
	return v.StringValue(), nil
}

// fakeRunPodPod answers as the provider's RunPodPod.Create does once the pod runs.
func fakeRunPodPod(args pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	if args.TypeToken != programs.RunPodPodType {
		return "", nil, errors.New("unexpected resource type " + args.TypeToken)
	}
	priv, err := secretString(args.Inputs["hostPrivateKey"])
	if err != nil {
		return "", nil, err
	}
	hostPub, err := programs.HostPublicKey(priv)
	if err != nil {
		return "", nil, err
	}
	state := args.Inputs.Copy()
	state["podId"] = resource.NewStringProperty("pod_abc123")
	state["host"] = resource.NewStringProperty("203.0.113.10")
	state["port"] = resource.NewNumberProperty(43210)
	state["user"] = resource.NewStringProperty("root")
	state["hostPublicKey"] = resource.NewStringProperty(hostPub)
	state["hostKeyTrust"] = resource.NewStringProperty("injected")
	state["hourlyPrice"] = resource.NewNumberProperty(0.69)
	state["gpu"] = resource.NewStringProperty("1x " + args.Inputs["gpuType"].StringValue())
	state["interruptible"] = resource.NewBoolProperty(args.Inputs["spot"].BoolValue())
	state["status"] = resource.NewStringProperty("RUNNING")
	state["running"] = resource.NewBoolProperty(true)
	return "pod_abc123", state, nil
}

// fakeLambda answers as the provider's LambdaSSHKey and LambdaInstance do.
func fakeLambda(args pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	state := args.Inputs.Copy()
	switch args.TypeToken {
	case programs.LambdaSSHKeyType:
		state["keyId"] = resource.NewStringProperty("key-0920582c")
		return "key-0920582c", state, nil
	case programs.LambdaInstanceType:
		priv, err := secretString(args.Inputs["hostPrivateKey"])
		if err != nil {
			return "", nil, err
		}
		hostPub, err := programs.HostPublicKey(priv)
		if err != nil {
			return "", nil, err
		}
		state["instanceId"] = resource.NewStringProperty("0920582c7ff041399e34823a0be62549")
		state["host"] = resource.NewStringProperty("198.51.100.7")
		state["port"] = resource.NewNumberProperty(22)
		state["user"] = resource.NewStringProperty("ubuntu")
		state["hostPublicKey"] = resource.NewStringProperty(hostPub)
		state["hostKeyTrust"] = resource.NewStringProperty("injected")
		state["hourlyPrice"] = resource.NewNumberProperty(0.75)
		state["gpu"] = resource.NewStringProperty("A10 (24 GB)")
		state["launchRegion"] = resource.NewStringProperty("us-east-1")
		state["status"] = resource.NewStringProperty("active")
		state["running"] = resource.NewBoolProperty(true)
		return "0920582c7ff041399e34823a0be62549", state, nil
	}
	return "", nil, errors.New("unexpected resource type " + args.TypeToken)
}

// recorder runs a program under mocks and keeps what was registered.
type recorder struct {
	mu   sync.Mutex
	regs []pulumi.MockResourceArgs
	fake func(pulumi.MockResourceArgs) (string, resource.PropertyMap, error)
	call func(pulumi.MockCallArgs) (resource.PropertyMap, error)
}

func (r *recorder) NewResource(a pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	r.mu.Lock()
	r.regs = append(r.regs, a)
	r.mu.Unlock()
	return r.fake(a)
}

func (r *recorder) Call(a pulumi.MockCallArgs) (resource.PropertyMap, error) {
	if r.call == nil {
		return nil, errors.New("no calls")
	}
	return r.call(a)
}

func (r *recorder) inputs(t *testing.T, typ string) resource.PropertyMap {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.regs {
		if a.TypeToken == typ {
			return a.Inputs
		}
	}
	t.Fatalf("no %s registered", typ)
	return nil
}

func deploy(t *testing.T, h programtest.Harness, mutate func(*programs.Spec)) *recorder {
	t.Helper()
	k := programtest.NewKeys(t)
	spec := h.BaseSpec(t, k)
	mutate(&spec)
	prog, err := programs.For(h.Provider)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{fake: h.NewResource, call: h.Call}
	if err := pulumi.RunErr(prog.Func(spec), pulumi.WithMocks("understudy-training", spec.TrainID, rec)); err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestRunPodRequestReachesPod(t *testing.T) {
	deadline := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	rec := deploy(t, runPodHarness, func(s *programs.Spec) {
		s.Machine = programs.MachineOptions{GPUType: "NVIDIA H100 80GB HBM3", Spot: true, OnDemandFallback: true}
		s.RunPod.GPUType = "NVIDIA GeForce RTX 4090"
		s.RunPod.OperatorKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq7PIv6Z0lLqpPP7Y+N2w5NkTb7d6RPMUY1y0bDdEUw ops@example"
		s.Deadline = deadline
	})
	in := rec.inputs(t, programs.RunPodPodType)
	if got := in["gpuType"].StringValue(); got != "NVIDIA H100 80GB HBM3" {
		t.Errorf("gpuType = %q, want the request's", got)
	}
	if !in["spot"].BoolValue() || !in["onDemandFallback"].BoolValue() {
		t.Error("spot or its fallback did not reach the pod")
	}
	keys := in["authorizedKeys"].ArrayValue()
	if len(keys) != 2 || !strings.Contains(keys[1].StringValue(), "ops@example") {
		t.Errorf("authorizedKeys = %v, want the job's key then the operator's", keys)
	}
	if in["leaseSeconds"].NumberValue() != 900 || int64(in["deadline"].NumberValue()) != deadline.Unix() {
		t.Errorf("lease %v deadline %v", in["leaseSeconds"], in["deadline"])
	}
	if got := in["name"].StringValue(); got != "understudy-tr-conformance-1" {
		t.Errorf("name = %q", got)
	}
	if got := in["workDir"].StringValue(); got != "/workspace/understudy/tr-conformance-1" {
		t.Errorf("workDir = %q", got)
	}
}

func TestLambdaRegistersTheJobKeyAndLaunchesWithIt(t *testing.T) {
	rec := deploy(t, lambdaHarness, func(s *programs.Spec) {
		s.Machine.GPUType = "gpu_1x_h100_pcie"
		s.Lambda.OperatorKeyName = "ops-laptop"
		s.Lambda.SSHUser = "root"
		s.Lambda.SSHPort = 2222
	})
	key := rec.inputs(t, programs.LambdaSSHKeyType)
	inst := rec.inputs(t, programs.LambdaInstanceType)
	if key["name"].StringValue() != "understudy-tr-conformance-1" || !strings.HasPrefix(key["publicKey"].StringValue(), "ssh-ed25519 ") {
		t.Errorf("key inputs %v", key)
	}
	if inst["instanceType"].StringValue() != "gpu_1x_h100_pcie" || inst["operatorKeyName"].StringValue() != "ops-laptop" ||
		inst["sshUser"].StringValue() != "root" || inst["sshPort"].NumberValue() != 2222 {
		t.Errorf("instance inputs %v", inst)
	}
}

func TestMachineName(t *testing.T) {
	if got := programs.MachineName("tr-1"); got != "understudy-tr-1" {
		t.Errorf("MachineName(tr-1) = %q", got)
	}
	long1, long2 := strings.Repeat("a", 120)+"1", strings.Repeat("a", 120)+"2"
	n1, n2 := programs.MachineName(long1), programs.MachineName(long2)
	if len(n1) > 64 || len(n2) > 64 || n1 == n2 || !strings.HasPrefix(n1, programs.MachinePrefix) {
		t.Errorf("long names %q %q: want distinct, at most 64 characters, prefixed", n1, n2)
	}
	// A train_id chosen to be the shortened name of a longer one gets a name of its own:
	// otherwise one job's teardown (by name) could remove the other's machine.
	mimic := strings.TrimPrefix(n1, programs.MachinePrefix)
	if got := programs.MachineName(mimic); got == n1 {
		t.Errorf("MachineName(%q) = %q, the name of another train_id", mimic, got)
	}
}

// The same for the names at AWS, GCP and Azure: a train_id cannot take the rewritten or
// shortened name of another.
func TestCloudNameCannotBeTaken(t *testing.T) {
	for _, victim := range []string{"Job_A", strings.Repeat("b", 120), "job.a"} {
		for _, max := range []int{63, 64, 255} {
			taken := programs.CloudName(victim, max)
			mimic := strings.TrimPrefix(taken, programs.MachinePrefix)
			if mimic == victim {
				continue // the name is the train_id itself: nobody else can have it
			}
			if got := programs.CloudName(mimic, max); got == taken {
				t.Errorf("CloudName(%q, %d) = %q, the name of %q", mimic, max, got, victim)
			}
		}
	}
}

func TestInspect(t *testing.T) {
	prog, err := programs.For("runpod")
	if err != nil {
		t.Fatal(err)
	}
	if s := prog.Inspect(nil); s.Exists {
		t.Errorf("no resources: %+v, want gone", s)
	}
	s := prog.Inspect([]programs.Resource{{Type: "understudy:lambda:SSHKey"}, {Type: programs.RunPodPodType,
		Outputs: map[string]any{"running": false, "interruptible": true, "status": "EXITED"}}})
	if !s.Exists || s.Running || !s.Preempted() || s.Status != "EXITED" {
		t.Errorf("exited spot pod: %+v", s)
	}
	s = prog.Inspect([]programs.Resource{{Type: programs.RunPodPodType, Outputs: map[string]any{"running": true, "status": "RUNNING"}}})
	if !s.Running || s.Preempted() {
		t.Errorf("running pod: %+v", s)
	}
}
