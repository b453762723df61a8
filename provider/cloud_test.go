package provider

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	p "github.com/pulumi/pulumi-go-provider"
	"github.com/pulumi/pulumi-go-provider/infer"
	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/internal/fakecloud"
	"github.com/understudy-ai/training-service/internal/fakecloud/fakecloudtest"
	"github.com/understudy-ai/training-service/provider/cloudapi"
	"github.com/understudy-ai/training-service/provider/runpod"
	"github.com/understudy-ai/training-service/provider/sshd"
)

// The tests of the cloud resources run them against the in-process fake clouds, whose
// machines are real sshd's on loopback. They set the API key in the environment, as the
// service does for the provider, so they cannot run in parallel.

const (
	cloudTestKey = "test-key"
	rtx4090      = "NVIDIA GeForce RTX 4090"
)

// cloudFake is a fake cloud served over HTTP.
type cloudFake struct {
	t *testing.T
	*fakecloudtest.Fake
}

// startCloudFake serves a fake cloud until the test ends, when every machine it made is torn
// down. wrap, when not nil, wraps the fake's handler.
func startCloudFake(t *testing.T, cfg fakecloud.Config, wrap func(http.Handler) http.Handler) *cloudFake {
	t.Helper()
	cfg.APIKey = cloudTestKey
	return &cloudFake{t: t, Fake: fakecloudtest.Start(t, cfg, wrap)}
}

type cloudFakeMachine struct {
	ID              string `json:"id"`
	Name            string `json:"name"`
	Interruptible   bool   `json:"interruptible"`
	HostKeyInjected bool   `json:"host_key_injected"`
}

// machines lists the machines and the SSH keys the fake holds.
func (f *cloudFake) machines() ([]cloudFakeMachine, []json.RawMessage) {
	f.t.Helper()
	var out struct {
		Machines []cloudFakeMachine `json:"machines"`
		SSHKeys  []json.RawMessage  `json:"ssh_keys"`
	}
	f.get("/_fake/machines", &out)
	return out.Machines, out.SSHKeys
}

// creates is how many machines the fake has made.
func (f *cloudFake) creates() int {
	f.t.Helper()
	var out struct {
		Creates int `json:"creates"`
	}
	f.get("/_fake/stats", &out)
	return out.Creates
}

func (f *cloudFake) get(path string, out any) { f.Get(path, out) }

// wantNoMachine fails the test when the fake still holds a machine.
func (f *cloudFake) wantNoMachine() {
	f.t.Helper()
	if ms, _ := f.machines(); len(ms) != 0 {
		f.t.Errorf("fake machines = %+v, want none", ms)
	}
}

// setCloudEnv gives the provider the API key in variable name and a rate limit directory
// of the test's own.
func setCloudEnv(t *testing.T, name string) {
	t.Setenv(name, cloudTestKey)
	t.Setenv(name+"_FILE", "")
	t.Setenv("UNDERSTUDY_RATE_DIR", t.TempDir())
}

// sshDial logs in to host:port as user with key, pinning hostKey (an authorized_keys line).
func sshDial(ctx context.Context, host string, port int, user string, key ssh.Signer, hostKey string) (*ssh.Client, error) {
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hostKey))
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, &ssh.ClientConfig{
		User: user, Auth: []ssh.AuthMethod{ssh.PublicKeys(key)}, HostKeyCallback: ssh.FixedHostKey(pub), Timeout: 10 * time.Second,
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// wantEchoOK logs in pinning hostKey and runs `echo ok`.
func wantEchoOK(t *testing.T, host string, port int, user string, key ssh.Signer, hostKey string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	c, err := sshDial(ctx, host, port, user, key, hostKey)
	if err != nil {
		t.Fatalf("ssh to %s:%d pinning %s: %v", host, port, hostKey, err)
	}
	defer c.Close()
	if out := run(t, c, "echo ok"); out != "ok" {
		t.Errorf("echo ok printed %q", out)
	}
}

func authorizedLine(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

func loginUser(t *testing.T) string {
	t.Helper()
	u, _, _, _, err := sshd.RunAs("")
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

func podArgs(f *cloudFake, k keys, name string) RunPodPodArgs {
	return RunPodPodArgs{Name: name, GPUType: rtx4090, AuthorizedKeys: []string{k.authorized}, HostPrivateKey: k.hostPEM,
		WorkDir: "/workspace/job", LeaseSeconds: 600, APIURL: f.URL, ReadyTimeout: 60}
}

func TestRunPodPodLifecycle(t *testing.T) {
	f := startCloudFake(t, fakecloud.Config{Provider: fakecloud.RunPod}, nil)
	setCloudEnv(t, "RUNPOD_API_KEY")
	ctx := t.Context()
	k := newKeys(t)
	args := podArgs(f, k, "tr-pod-1")
	r := &RunPodPod{}

	preview, err := r.Create(ctx, infer.CreateRequest[RunPodPodArgs]{Name: "pod", Inputs: args, DryRun: true})
	if err != nil {
		t.Fatalf("Create (preview): %v", err)
	}
	if preview.ID != "" || preview.Output.HostPublicKey != authorizedLine(k.hostPub) || preview.Output.HostKeyTrust != TrustInjected {
		t.Errorf("preview = %+v", preview)
	}
	if n := f.creates(); n != 0 {
		t.Fatalf("a preview made %d machines", n)
	}

	resp, err := r.Create(ctx, infer.CreateRequest[RunPodPodArgs]{Name: "pod", Inputs: args})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	s := resp.Output
	if resp.ID == "" || resp.ID != s.PodID {
		t.Errorf("ID = %q, podId = %q; want equal and non-empty", resp.ID, s.PodID)
	}
	if s.Host != "127.0.0.1" || s.Port <= 0 || s.User != loginUser(t) || s.HourlyPrice <= 0 || !s.Running || s.Status != runpod.StatusRunning {
		t.Errorf("state host=%q port=%d user=%q price=%v running=%v status=%q", s.Host, s.Port, s.User, s.HourlyPrice, s.Running, s.Status)
	}
	if s.HostKeyTrust != TrustInjected || s.HostPublicKey != authorizedLine(k.hostPub) || s.Interruptible {
		t.Errorf("state hostKeyTrust=%q hostPublicKey=%q interruptible=%v; want the injected key, not interruptible",
			s.HostKeyTrust, s.HostPublicKey, s.Interruptible)
	}
	if s.GPU != "1x "+rtx4090 || s.Cloud != RunPodDefaultCloud || s.Image != RunPodDefaultImage || s.GPUCount != 1 {
		t.Errorf("state gpu=%q cloud=%q image=%q gpuCount=%d; want the defaults", s.GPU, s.Cloud, s.Image, s.GPUCount)
	}
	// The machine presents the host key of the spec: it reached the machine before sshd.
	wantEchoOK(t, s.Host, s.Port, s.User, k.userSigner, s.HostPublicKey)
	other := newKeys(t)
	if c, err := sshDial(ctx, s.Host, s.Port, s.User, k.userSigner, authorizedLine(other.hostPub)); err == nil {
		c.Close()
		t.Error("connected although the pinned host key differs")
	}

	read, err := r.Read(ctx, infer.ReadRequest[RunPodPodArgs, RunPodPodState]{ID: resp.ID, Inputs: args, State: s})
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if read.ID != resp.ID || !read.State.Running || read.State.Status != runpod.StatusRunning || read.State.Port != s.Port {
		t.Errorf("Read = id %q state %+v; want the pod running", read.ID, read.State)
	}

	if _, err := r.Delete(ctx, infer.DeleteRequest[RunPodPodState]{ID: resp.ID, State: s}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	f.wantNoMachine()
	gone, err := r.Read(ctx, infer.ReadRequest[RunPodPodArgs, RunPodPodState]{ID: resp.ID, Inputs: args, State: s})
	if err != nil || gone.ID != "" {
		t.Errorf("Read after delete = id %q, %v; want gone", gone.ID, err)
	}
	if _, err := r.Delete(ctx, infer.DeleteRequest[RunPodPodState]{ID: resp.ID, State: s}); err != nil {
		t.Errorf("Delete of a deleted pod: %v, want success", err)
	}
}

func TestRunPodPodSpot(t *testing.T) {
	f := startCloudFake(t, fakecloud.Config{Provider: fakecloud.RunPod}, nil)
	setCloudEnv(t, "RUNPOD_API_KEY")
	ctx := t.Context()
	k := newKeys(t)
	price, err := runpod.New(runpod.Config{APIURL: f.URL, APIKey: cloudTestKey}).SpotPrice(ctx, rtx4090, 1)
	if err != nil {
		t.Fatal(err)
	}
	args := podArgs(f, k, "tr-spot-1")
	args.Spot = true
	r := &RunPodPod{}

	resp, err := r.Create(ctx, infer.CreateRequest[RunPodPodArgs]{Name: "pod", Inputs: args})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	s := resp.Output
	if !s.Interruptible || s.HourlyPrice != price.MinimumBidPerGPU || !s.Running {
		t.Errorf("state interruptible=%v price=%v running=%v; want a running spot pod at %v", s.Interruptible, s.HourlyPrice, s.Running, price.MinimumBidPerGPU)
	}
	if ms, _ := f.machines(); len(ms) != 1 || !ms[0].Interruptible || ms[0].ID != resp.ID {
		t.Errorf("fake machines = %+v, want the spot pod", ms)
	}
	wantEchoOK(t, s.Host, s.Port, s.User, k.userSigner, authorizedLine(k.hostPub))
	if _, err := r.Delete(ctx, infer.DeleteRequest[RunPodPodState]{ID: resp.ID, State: s}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	f.wantNoMachine()
}

// When no spot pod can be had (here: the GraphQL API is gone), a pod that allows it is
// rented on demand; one that does not fails and leaves nothing behind.
func TestRunPodPodSpotFallback(t *testing.T) {
	noGraphQL := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/graphql" {
				http.NotFound(w, r)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	f := startCloudFake(t, fakecloud.Config{Provider: fakecloud.RunPod}, noGraphQL)
	setCloudEnv(t, "RUNPOD_API_KEY")
	ctx := t.Context()
	k := newKeys(t)
	r := &RunPodPod{}

	args := podArgs(f, k, "tr-fallback-1")
	args.Spot, args.OnDemandFallback = true, true
	resp, err := r.Create(ctx, infer.CreateRequest[RunPodPodArgs]{Name: "pod", Inputs: args})
	if err != nil {
		t.Fatalf("Create with fallback: %v", err)
	}
	s := resp.Output
	if s.Interruptible || !s.Running || s.HourlyPrice != 0.69 {
		t.Errorf("state interruptible=%v running=%v price=%v; want a running on-demand pod at 0.69", s.Interruptible, s.Running, s.HourlyPrice)
	}
	if ms, _ := f.machines(); len(ms) != 1 || ms[0].Interruptible {
		t.Errorf("fake machines = %+v, want one on-demand pod", ms)
	}
	if _, err := r.Delete(ctx, infer.DeleteRequest[RunPodPodState]{ID: resp.ID, State: s}); err != nil {
		t.Fatalf("Delete: %v", err)
	}

	args = podArgs(f, k, "tr-fallback-2")
	args.Spot = true
	if resp, err := r.Create(ctx, infer.CreateRequest[RunPodPodArgs]{Name: "pod", Inputs: args}); err == nil {
		t.Errorf("Create without fallback = %+v; want an error", resp)
	}
	f.wantNoMachine()
	if n := f.creates(); n != 1 {
		t.Errorf("creates = %d, want 1", n)
	}
}

// A pod that does not run in time is deleted again.
func TestRunPodPodNeverRuns(t *testing.T) {
	f := startCloudFake(t, fakecloud.Config{Provider: fakecloud.RunPod, BootDelay: 30 * time.Second}, nil)
	setCloudEnv(t, "RUNPOD_API_KEY")
	args := podArgs(f, newKeys(t), "tr-slow-1")
	args.ReadyTimeout = 1

	resp, err := (&RunPodPod{}).Create(t.Context(), infer.CreateRequest[RunPodPodArgs]{Name: "pod", Inputs: args})
	if err == nil || resp.ID != "" {
		t.Fatalf("Create = id %q, %v; want an error and no pod", resp.ID, err)
	}
	if !strings.Contains(err.Error(), "wait for pod") {
		t.Errorf("error %q does not say what failed", err)
	}
	if n := f.creates(); n != 1 {
		t.Errorf("creates = %d, want 1", n)
	}
	f.wantNoMachine()
}

func TestRunPodPodNoCapacity(t *testing.T) {
	f := startCloudFake(t, fakecloud.Config{Provider: fakecloud.RunPod, Faults: fakecloud.Faults{NoCapacity: true}}, nil)
	setCloudEnv(t, "RUNPOD_API_KEY")
	_, err := (&RunPodPod{}).Create(t.Context(), infer.CreateRequest[RunPodPodArgs]{Name: "pod", Inputs: podArgs(f, newKeys(t), "tr-nocap-1")})
	if cloudapi.ReasonOf(err) != cloudapi.ReasonNoCapacity || !strings.Contains(err.Error(), "[understudy:no_capacity]") {
		t.Errorf("Create: %v; want reason no_capacity and its marker", err)
	}
	f.wantNoMachine()
}

func TestCloudResourcesWithoutAPIKey(t *testing.T) {
	for _, name := range []string{"RUNPOD_API_KEY", "LAMBDA_API_KEY"} {
		t.Setenv(name, "")
		t.Setenv(name+"_FILE", "")
	}
	ctx := t.Context()
	k := newKeys(t)
	const url = "http://127.0.0.1:1" // never called
	wantAuth := func(what, variable string, err error) {
		t.Helper()
		if cloudapi.ReasonOf(err) != cloudapi.ReasonAuth || !strings.Contains(err.Error(), variable) {
			t.Errorf("%s: %v; want reason %s naming %s", what, err, cloudapi.ReasonAuth, variable)
		}
	}
	pod := RunPodPodArgs{Name: "tr-nokey-1", GPUType: rtx4090, AuthorizedKeys: []string{k.authorized}, HostPrivateKey: k.hostPEM,
		WorkDir: "/workspace/job", APIURL: url}
	_, err := (&RunPodPod{}).Create(ctx, infer.CreateRequest[RunPodPodArgs]{Name: "pod", Inputs: pod})
	wantAuth("RunPodPod.Create", "RUNPOD_API_KEY", err)
	_, err = (&RunPodPod{}).Delete(ctx, infer.DeleteRequest[RunPodPodState]{ID: "pod-1", State: RunPodPodState{RunPodPodArgs: pod}})
	wantAuth("RunPodPod.Delete", "RUNPOD_API_KEY", err)

	inst := LambdaInstanceArgs{Name: "tr-nokey-1", SSHKeyName: "tr-nokey-1", AuthorizedKeys: []string{k.authorized},
		HostPrivateKey: k.hostPEM, WorkDir: "/home/ubuntu/job", APIURL: url}
	_, err = (&LambdaInstance{}).Create(ctx, infer.CreateRequest[LambdaInstanceArgs]{Name: "instance", Inputs: inst})
	wantAuth("LambdaInstance.Create", "LAMBDA_API_KEY", err)
	_, err = (&LambdaSSHKey{}).Create(ctx, infer.CreateRequest[LambdaSSHKeyArgs]{Name: "key",
		Inputs: LambdaSSHKeyArgs{Name: "tr-nokey-1", PublicKey: k.authorized, APIURL: url}})
	wantAuth("LambdaSSHKey.Create", "LAMBDA_API_KEY", err)
}

// createLambdaKey registers the job's key.
func createLambdaKey(t *testing.T, f *cloudFake, k keys, name string) infer.CreateResponse[LambdaSSHKeyState] {
	t.Helper()
	resp, err := (&LambdaSSHKey{}).Create(t.Context(), infer.CreateRequest[LambdaSSHKeyArgs]{Name: "key",
		Inputs: LambdaSSHKeyArgs{Name: name, PublicKey: k.authorized, APIURL: f.URL}})
	if err != nil {
		t.Fatalf("LambdaSSHKey.Create: %v", err)
	}
	if resp.ID == "" || resp.ID != resp.Output.KeyID {
		t.Fatalf("LambdaSSHKey.Create = %+v; want an id", resp)
	}
	return resp
}

func instanceArgs(t *testing.T, f *cloudFake, k keys, name, keyName string) LambdaInstanceArgs {
	return LambdaInstanceArgs{Name: name, InstanceType: "gpu_1x_a10", SSHKeyName: keyName, AuthorizedKeys: []string{k.authorized},
		HostPrivateKey: k.hostPEM, SSHUser: loginUser(t), SSHPort: f.SSHPort, WorkDir: "/home/ubuntu/job", LeaseSeconds: 600,
		APIURL: f.URL, ReadyTimeout: 60}
}

func TestLambdaInstanceLifecycle(t *testing.T) {
	f := startCloudFake(t, fakecloud.Config{Provider: fakecloud.Lambda}, nil)
	setCloudEnv(t, "LAMBDA_API_KEY")
	ctx := t.Context()
	k := newKeys(t)
	kr := &LambdaSSHKey{}
	key := createLambdaKey(t, f, k, "tr-lambda-1")
	if read, err := kr.Read(ctx, infer.ReadRequest[LambdaSSHKeyArgs, LambdaSSHKeyState]{ID: key.ID, Inputs: key.Output.LambdaSSHKeyArgs, State: key.Output}); err != nil || read.ID != key.ID {
		t.Errorf("LambdaSSHKey.Read = id %q, %v; want %s", read.ID, err, key.ID)
	}

	r := &LambdaInstance{}
	args := instanceArgs(t, f, k, "tr-lambda-1", key.Output.Name)
	resp, err := r.Create(ctx, infer.CreateRequest[LambdaInstanceArgs]{Name: "instance", Inputs: args})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	s := resp.Output
	if resp.ID == "" || resp.ID != s.InstanceID {
		t.Errorf("ID = %q, instanceId = %q; want equal and non-empty", resp.ID, s.InstanceID)
	}
	if ip := net.ParseIP(s.Host); ip == nil || !ip.IsLoopback() || s.Port != f.SSHPort || s.User != args.SSHUser || !s.Running {
		t.Errorf("state host=%q port=%d user=%q running=%v", s.Host, s.Port, s.User, s.Running)
	}
	if s.HostKeyTrust != TrustInjected || s.HostPublicKey != authorizedLine(k.hostPub) {
		t.Errorf("state hostKeyTrust=%q hostPublicKey=%q; want the injected key", s.HostKeyTrust, s.HostPublicKey)
	}
	if s.LaunchRegion != "us-east-1" || s.HourlyPrice != 0.75 || s.GPU != "A10 (24 GB)" || s.Status != "active" {
		t.Errorf("state region=%q price=%v gpu=%q status=%q", s.LaunchRegion, s.HourlyPrice, s.GPU, s.Status)
	}
	wantEchoOK(t, s.Host, s.Port, s.User, k.userSigner, authorizedLine(k.hostPub))

	read, err := r.Read(ctx, infer.ReadRequest[LambdaInstanceArgs, LambdaInstanceState]{ID: resp.ID, Inputs: args, State: s})
	if err != nil || read.ID != resp.ID || !read.State.Running || read.State.Host != s.Host {
		t.Errorf("Read = id %q state %+v, %v; want the instance running", read.ID, read.State, err)
	}

	if _, err := r.Delete(ctx, infer.DeleteRequest[LambdaInstanceState]{ID: resp.ID, State: s}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := kr.Delete(ctx, infer.DeleteRequest[LambdaSSHKeyState]{ID: key.ID, State: key.Output}); err != nil {
		t.Fatalf("LambdaSSHKey.Delete: %v", err)
	}
	if ms, keys := f.machines(); len(ms) != 0 || len(keys) != 0 {
		t.Errorf("fake holds machines %+v and keys %s; want none", ms, keys)
	}
	if gone, err := r.Read(ctx, infer.ReadRequest[LambdaInstanceArgs, LambdaInstanceState]{ID: resp.ID, Inputs: args, State: s}); err != nil || gone.ID != "" {
		t.Errorf("Read after delete = id %q, %v; want gone", gone.ID, err)
	}
	if gone, err := kr.Read(ctx, infer.ReadRequest[LambdaSSHKeyArgs, LambdaSSHKeyState]{ID: key.ID, State: key.Output}); err != nil || gone.ID != "" {
		t.Errorf("LambdaSSHKey.Read after delete = id %q, %v; want gone", gone.ID, err)
	}
}

// When Lambda refuses user data, the instance is launched without it and the host key it
// presents is pinned on first use.
func TestLambdaInstanceWithoutUserData(t *testing.T) {
	f := startCloudFake(t, fakecloud.Config{Provider: fakecloud.Lambda, Faults: fakecloud.Faults{NoUserData: true}}, nil)
	setCloudEnv(t, "LAMBDA_API_KEY")
	ctx := t.Context()
	k := newKeys(t)
	key := createLambdaKey(t, f, k, "tr-tofu-1")
	r := &LambdaInstance{}
	args := instanceArgs(t, f, k, "tr-tofu-1", key.Output.Name)

	resp, err := r.Create(ctx, infer.CreateRequest[LambdaInstanceArgs]{Name: "instance", Inputs: args})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	s := resp.Output
	if s.HostKeyTrust != TrustFirstUse || s.HostPublicKey == "" || s.HostPublicKey == authorizedLine(k.hostPub) {
		t.Errorf("state hostKeyTrust=%q hostPublicKey=%q; want the key the machine made, trusted on first use", s.HostKeyTrust, s.HostPublicKey)
	}
	if ms, _ := f.machines(); len(ms) != 1 || ms[0].HostKeyInjected {
		t.Errorf("fake machines = %+v; want one without an injected host key", ms)
	}
	// The pinned key is the one the machine really presents.
	wantEchoOK(t, s.Host, s.Port, s.User, k.userSigner, s.HostPublicKey)

	if _, err := r.Delete(ctx, infer.DeleteRequest[LambdaInstanceState]{ID: resp.ID, State: s}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := (&LambdaSSHKey{}).Delete(ctx, infer.DeleteRequest[LambdaSSHKeyState]{ID: key.ID, State: key.Output}); err != nil {
		t.Fatalf("LambdaSSHKey.Delete: %v", err)
	}
	if ms, keys := f.machines(); len(ms) != 0 || len(keys) != 0 {
		t.Errorf("fake holds machines %+v and keys %s; want none", ms, keys)
	}
}

// Any change of an input of a cloud resource replaces it; inputs that leave out what
// Create filled in with defaults are no change.
func TestCloudDiffReplacesOnAnyInputChange(t *testing.T) {
	t.Parallel()
	k := newKeys(t)
	pod := RunPodPodArgs{Name: "tr-1", GPUType: rtx4090, GPUCount: 2, Image: "img", Cloud: "COMMUNITY", DataCenterIDs: []string{"US-KS-2"},
		DiskGB: 60, Spot: true, OnDemandFallback: true, AuthorizedKeys: []string{k.authorized}, HostPrivateKey: k.hostPEM,
		WorkDir: "/workspace/job", LeaseSeconds: 600, Deadline: 1_900_000_000, APIURL: "http://runpod.test", ReadyTimeout: 60,
		Tags: map[string]string{"train_id": "tr-1"}}
	checkDiff(t, "RunPodPod", pod, func(olds, news RunPodPodArgs) (p.DiffResponse, error) {
		return (&RunPodPod{}).Diff(t.Context(), infer.DiffRequest[RunPodPodArgs, RunPodPodState]{ID: "pod-1",
			State: RunPodPodState{RunPodPodArgs: olds}, Inputs: news})
	})
	minimalPod := RunPodPodArgs{Name: "tr-1", GPUType: rtx4090, AuthorizedKeys: []string{k.authorized}, WorkDir: "/workspace/job"}
	if resp, err := (&RunPodPod{}).Diff(t.Context(), infer.DiffRequest[RunPodPodArgs, RunPodPodState]{ID: "pod-1",
		State: RunPodPodState{RunPodPodArgs: minimalPod.withDefaults()}, Inputs: minimalPod}); err != nil || resp.HasChanges {
		t.Errorf("RunPodPod: defaults left out: diff %+v, %v; want none", resp.DetailedDiff, err)
	}

	inst := LambdaInstanceArgs{Name: "tr-1", InstanceType: "gpu_1x_a100_sxm4", Region: "us-west-1", SSHKeyName: "tr-1",
		OperatorKeyName: "ops", AuthorizedKeys: []string{k.authorized}, HostPrivateKey: k.hostPEM, SSHUser: "ubuntu", SSHPort: 2222,
		WorkDir: "/home/ubuntu/job", LeaseSeconds: 600, Deadline: 1_900_000_000, APIURL: "http://lambda.test/api/v1", ReadyTimeout: 60,
		Tags: map[string]string{"train_id": "tr-1"}}
	checkDiff(t, "LambdaInstance", inst, func(olds, news LambdaInstanceArgs) (p.DiffResponse, error) {
		return (&LambdaInstance{}).Diff(t.Context(), infer.DiffRequest[LambdaInstanceArgs, LambdaInstanceState]{ID: "i-1",
			State: LambdaInstanceState{LambdaInstanceArgs: olds}, Inputs: news})
	})
	minimalInst := LambdaInstanceArgs{Name: "tr-1", SSHKeyName: "tr-1", AuthorizedKeys: []string{k.authorized}, WorkDir: "/home/ubuntu/job"}
	if resp, err := (&LambdaInstance{}).Diff(t.Context(), infer.DiffRequest[LambdaInstanceArgs, LambdaInstanceState]{ID: "i-1",
		State: LambdaInstanceState{LambdaInstanceArgs: minimalInst.withDefaults()}, Inputs: minimalInst}); err != nil || resp.HasChanges {
		t.Errorf("LambdaInstance: defaults left out: diff %+v, %v; want none", resp.DetailedDiff, err)
	}

	key := LambdaSSHKeyArgs{Name: "tr-1", PublicKey: k.authorized, APIURL: "http://lambda.test/api/v1", Tags: map[string]string{"train_id": "tr-1"}}
	checkDiff(t, "LambdaSSHKey", key, func(olds, news LambdaSSHKeyArgs) (p.DiffResponse, error) {
		return (&LambdaSSHKey{}).Diff(t.Context(), infer.DiffRequest[LambdaSSHKeyArgs, LambdaSSHKeyState]{ID: "key-1",
			State: LambdaSSHKeyState{LambdaSSHKeyArgs: olds}, Inputs: news})
	})
}

// checkDiff changes each input field of base in turn (found by reflection, so that a new
// input cannot be forgotten) and wants exactly that input to replace the resource.
func checkDiff[A any](t *testing.T, resource string, base A, diff func(olds, news A) (p.DiffResponse, error)) {
	t.Helper()
	if resp, err := diff(base, base); err != nil || resp.HasChanges {
		t.Errorf("%s: same inputs: diff %+v, %v; want none", resource, resp.DetailedDiff, err)
	}
	typ := reflect.TypeFor[A]()
	for i := range typ.NumField() {
		field := typ.Field(i)
		name, _, _ := strings.Cut(field.Tag.Get("pulumi"), ",")
		news := base
		v := reflect.ValueOf(&news).Elem().Field(i)
		switch v.Kind() {
		case reflect.String:
			v.SetString(v.String() + "-changed")
		case reflect.Int:
			v.SetInt(v.Int() + 1)
		case reflect.Bool:
			v.SetBool(!v.Bool())
		case reflect.Slice:
			grown := reflect.AppendSlice(reflect.MakeSlice(v.Type(), 0, v.Len()+1), v)
			v.Set(reflect.Append(grown, reflect.ValueOf("changed")))
		case reflect.Map:
			m := reflect.MakeMap(v.Type())
			for it := v.MapRange(); it.Next(); {
				m.SetMapIndex(it.Key(), it.Value())
			}
			m.SetMapIndex(reflect.ValueOf("changed"), reflect.ValueOf("yes"))
			v.Set(m)
		default:
			t.Fatalf("%s: input %s has kind %s, which the test cannot change", resource, name, v.Kind())
		}
		resp, err := diff(base, news)
		if err != nil {
			t.Fatalf("%s: Diff: %v", resource, err)
		}
		if !resp.HasChanges || len(resp.DetailedDiff) != 1 || resp.DetailedDiff[name].Kind != p.UpdateReplace {
			t.Errorf("%s: change of %s: hasChanges %v, diff %+v; want only %s update&replace", resource, name, resp.HasChanges, resp.DetailedDiff, name)
		}
	}
}
