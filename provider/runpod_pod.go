package provider

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pulumi/pulumi-go-provider/infer"

	"github.com/understudy-ai/training-service/provider/boot"
	"github.com/understudy-ai/training-service/provider/cloudapi"
	"github.com/understudy-ai/training-service/provider/runpod"
)

// RunPod defaults.
const (
	RunPodDefaultImage = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2204"
	RunPodDefaultCloud = "SECURE"
	RunPodDefaultDisk  = 50
	runPodReadyTimeout = 15 * time.Minute
	runPodGoneTimeout  = 5 * time.Minute
)

// RunPodPod is a RunPod GPU pod (token understudy:runpod:Pod), made over RunPod's REST API
// v2, or through its GraphQL API when a spot (interruptible) pod is asked for. Create waits
// until the pod runs with a direct SSH address; Delete terminates it and waits until it is
// gone. The API key comes from RUNPOD_API_KEY (or RUNPOD_API_KEY_FILE) in the provider's
// environment, never from the stack.
type RunPodPod struct{}

// RunPodPodArgs are the inputs of a pod.
type RunPodPodArgs struct {
	Name             string            `pulumi:"name"`
	GPUType          string            `pulumi:"gpuType"`
	GPUCount         int               `pulumi:"gpuCount,optional"`
	Image            string            `pulumi:"image,optional"`
	Cloud            string            `pulumi:"cloud,optional"`
	DataCenterIDs    []string          `pulumi:"dataCenterIds,optional"`
	DiskGB           int               `pulumi:"diskGb,optional"`
	Spot             bool              `pulumi:"spot,optional"`
	OnDemandFallback bool              `pulumi:"onDemandFallback,optional"`
	AuthorizedKeys   []string          `pulumi:"authorizedKeys"`
	HostPrivateKey   string            `pulumi:"hostPrivateKey,optional" provider:"secret"`
	WorkDir          string            `pulumi:"workDir"`
	LeaseSeconds     int               `pulumi:"leaseSeconds,optional"`
	Deadline         int               `pulumi:"deadline,optional"`
	APIURL           string            `pulumi:"apiUrl,optional"`
	ReadyTimeout     int               `pulumi:"readyTimeoutSeconds,optional"`
	Tags             map[string]string `pulumi:"tags,optional"`
}

// RunPodPodState is a pod's state: its inputs and what RunPod made.
type RunPodPodState struct {
	RunPodPodArgs

	PodID         string  `pulumi:"podId"`
	Host          string  `pulumi:"host"`
	Port          int     `pulumi:"port"`
	User          string  `pulumi:"user"`
	HostPublicKey string  `pulumi:"hostPublicKey"`
	HostKeyTrust  string  `pulumi:"hostKeyTrust"`
	HourlyPrice   float64 `pulumi:"hourlyPrice"`
	GPU           string  `pulumi:"gpu"`
	Interruptible bool    `pulumi:"interruptible"`
	Status        string  `pulumi:"status"`
	Running       bool    `pulumi:"running"`
}

// Annotate sets the resource's token and description.
func (r *RunPodPod) Annotate(a infer.Annotator) {
	a.SetToken("runpod", "Pod")
	a.Describe(&r, "A RunPod GPU pod reached over SSH, with the service's host key installed before sshd starts and a dead-man's switch.")
}

// Annotate describes the inputs.
func (a *RunPodPodArgs) Annotate(an infer.Annotator) {
	an.Describe(&a.Name, "The pod's name, unique per job: after an ambiguous create the pod is looked up by it.")
	an.Describe(&a.GPUType, "The GPU type id from RunPod's catalogue, such as \"NVIDIA GeForce RTX 4090\".")
	an.Describe(&a.GPUCount, "How many GPUs; default 1.")
	an.Describe(&a.Image, "The container image; default "+RunPodDefaultImage+" (the runtime reuses its PyTorch).")
	an.Describe(&a.Cloud, "SECURE or COMMUNITY; default SECURE.")
	an.Describe(&a.DataCenterIDs, "Preferred data centers; empty lets RunPod choose.")
	an.Describe(&a.DiskGB, "Container disk in GB; default 50.")
	an.Describe(&a.Spot, "Rent an interruptible (spot) pod at the catalogue's minimum bid.")
	an.Describe(&a.OnDemandFallback, "When a spot pod cannot be had, rent an on-demand one instead of failing.")
	an.Describe(&a.AuthorizedKeys, "Public keys that may log in: the job's first, then any operator key.")
	an.Describe(&a.HostPrivateKey, "The pod's SSH host key (OpenSSH PEM ed25519), installed before sshd starts.")
	an.Describe(&a.WorkDir, "The job's directory on the pod; its lease file is <workDir>/lease.")
	an.Describe(&a.LeaseSeconds, "The dead-man's switch: the pod stops itself when its lease is not renewed for this long; 0 turns it off.")
	an.Describe(&a.Deadline, "Unix time at which the pod stops itself (the job's max_duration_seconds); 0 means none.")
	an.Describe(&a.APIURL, "RunPod's API base URL; default $RUNPOD_API_URL, else "+runpod.DefaultAPIURL+".")
	an.Describe(&a.ReadyTimeout, "How long to wait for the pod to run, in seconds; default 900.")
	an.Describe(&a.Tags, "Labels of the job, kept in the stack's state (pods carry no labels).")
}

// Annotate describes the outputs.
func (s *RunPodPodState) Annotate(a infer.Annotator) {
	a.Describe(&s.PodID, "RunPod's id of the pod.")
	a.Describe(&s.Host, "The pod's public address for SSH (ssh.direct).")
	a.Describe(&s.Port, "The public port mapped to the pod's port 22.")
	a.Describe(&s.User, "The SSH user.")
	a.Describe(&s.HostPublicKey, "The host key to pin, authorized_keys format.")
	a.Describe(&s.HostKeyTrust, "injected (installed before sshd started) or first-use.")
	a.Describe(&s.HourlyPrice, "What the pod costs, USD per hour.")
	a.Describe(&s.GPU, "The GPUs, such as \"1x NVIDIA GeForce RTX 4090\".")
	a.Describe(&s.Interruptible, "Whether the pod is a spot pod that RunPod may stop.")
	a.Describe(&s.Status, "The pod's status when last read.")
	a.Describe(&s.Running, "Whether the pod was running when last read.")
}

func (a RunPodPodArgs) machine() machineArgs {
	return machineArgs{authorizedKeys: a.AuthorizedKeys, hostPrivateKey: a.HostPrivateKey, workDir: a.WorkDir,
		leaseSeconds: a.LeaseSeconds, deadline: a.Deadline}
}

func (a RunPodPodArgs) withDefaults() RunPodPodArgs {
	if a.GPUCount <= 0 {
		a.GPUCount = 1
	}
	if a.Image == "" {
		a.Image = RunPodDefaultImage
	}
	if a.Cloud == "" {
		a.Cloud = RunPodDefaultCloud
	}
	a.Cloud = strings.ToUpper(a.Cloud)
	if a.DiskGB <= 0 {
		a.DiskGB = RunPodDefaultDisk
	}
	if a.APIURL == "" {
		a.APIURL = envOr("RUNPOD_API_URL", runpod.DefaultAPIURL)
	}
	return a
}

func runPodClient(apiURL string) (*runpod.Client, error) {
	key, err := apiKey("RUNPOD_API_KEY")
	if err != nil {
		return nil, err
	}
	return runpod.New(runpod.Config{APIURL: apiURL, APIKey: key, PollInterval: pollInterval}), nil
}

// Create rents the pod and waits until it runs. A pod that never runs is deleted again;
// only if that fails does Create return infer.ResourceInitFailedError with the state, so
// that the pod stays in the stack and a destroy deletes it.
func (r *RunPodPod) Create(ctx context.Context, req infer.CreateRequest[RunPodPodArgs]) (infer.CreateResponse[RunPodPodState], error) {
	in := req.Inputs.withDefaults()
	hostPub, err := in.machine().check()
	if err != nil {
		return infer.CreateResponse[RunPodPodState]{}, err
	}
	if in.Name == "" || in.GPUType == "" {
		return infer.CreateResponse[RunPodPodState]{}, fmt.Errorf("name and gpuType are required")
	}
	if in.Cloud != "SECURE" && in.Cloud != "COMMUNITY" {
		return infer.CreateResponse[RunPodPodState]{}, fmt.Errorf("cloud %q: want SECURE or COMMUNITY", in.Cloud)
	}
	state := RunPodPodState{RunPodPodArgs: in, HostPublicKey: hostPub, HostKeyTrust: TrustInjected,
		GPU: fmt.Sprintf("%dx %s", in.GPUCount, in.GPUType)}
	if req.DryRun {
		return infer.CreateResponse[RunPodPodState]{Output: state}, nil
	}
	if hostPub == "" {
		return infer.CreateResponse[RunPodPodState]{}, fmt.Errorf("hostPrivateKey is required: a pod's host key is always installed at boot")
	}
	client, err := runPodClient(in.APIURL)
	if err != nil {
		return infer.CreateResponse[RunPodPodState]{}, err
	}
	env, args := boot.RunPodStart(in.machine().boot())

	var podID string
	if in.Spot {
		podID, state.HourlyPrice, err = r.createSpot(ctx, client, in, env, args)
		if err == nil {
			state.Interruptible = true
		} else if in.OnDemandFallback && spotFallbackAllowed(err) {
			info(ctx, "no spot pod (%v); renting an on-demand pod as the job allows", err)
		} else {
			return infer.CreateResponse[RunPodPodState]{}, err
		}
	}
	if podID == "" {
		status(ctx, "creating pod %s (%s)", in.Name, state.GPU)
		pod, err := client.CreatePod(ctx, runpod.CreatePodRequest{
			Name: in.Name, Image: in.Image, GPU: &runpod.GPU{ID: in.GPUType, Count: in.GPUCount}, Cloud: in.Cloud,
			DataCenterIDs: in.DataCenterIDs, Ports: []string{"22/tcp"}, Env: env, Disk: in.DiskGB, Args: args,
		})
		if err != nil {
			return infer.CreateResponse[RunPodPodState]{}, err
		}
		podID = pod.ID
	}
	state.PodID = podID
	info(ctx, "pod %s created; waiting until it runs", podID)

	wctx, cancel := context.WithTimeout(ctx, timeoutOr(in.ReadyTimeout, runPodReadyTimeout))
	pod, err := client.WaitRunning(wctx, podID)
	cancel()
	if err != nil {
		return r.abandon(ctx, client, state, fmt.Errorf("wait for pod %s to run: %w", podID, err))
	}
	state.Host, state.Port, state.User = pod.SSH.Direct.Host, pod.SSH.Direct.Port, pod.SSH.Direct.Username
	if state.User == "" {
		state.User = "root"
	}
	if pod.Cost > 0 {
		state.HourlyPrice = pod.Cost
	} else if state.HourlyPrice == 0 {
		if g, err := client.GPUType(ctx, in.GPUType); err == nil {
			state.HourlyPrice = g.HourlyPrice(in.Cloud, in.GPUCount)
		}
	}
	state.Status, state.Running = pod.Status, true
	info(ctx, "pod %s runs at %s, $%.3f/h", podID, net.JoinHostPort(state.Host, strconv.Itoa(state.Port)), state.HourlyPrice)
	return infer.CreateResponse[RunPodPodState]{ID: podID, Output: state}, nil
}

// createSpot rents an interruptible pod at the catalogue's minimum bid.
func (r *RunPodPod) createSpot(ctx context.Context, client *runpod.Client, in RunPodPodArgs, env map[string]string, args string) (string, float64, error) {
	price, err := client.SpotPrice(ctx, in.GPUType, in.GPUCount)
	if err != nil {
		return "", 0, err
	}
	status(ctx, "creating spot pod %s (%dx %s) at $%.3f/GPU/h", in.Name, in.GPUCount, in.GPUType, price.MinimumBidPerGPU)
	dc := ""
	if len(in.DataCenterIDs) > 0 {
		dc = in.DataCenterIDs[0]
	}
	return client.CreateSpotPod(ctx, runpod.SpotPodRequest{
		Name: in.Name, Image: in.Image, GPUTypeID: in.GPUType, GPUCount: in.GPUCount, Cloud: in.Cloud,
		DataCenterID: dc, BidPerGPU: price.MinimumBidPerGPU, Env: env, Args: args, ContainerDisk: in.DiskGB,
	})
}

// spotFallbackAllowed reports whether a failed spot request may be retried on demand: not
// for a bad key or an empty balance, which on-demand would meet too.
func spotFallbackAllowed(err error) bool {
	switch cloudapi.ReasonOf(err) {
	case cloudapi.ReasonAuth, cloudapi.ReasonQuota:
		return false
	}
	return true
}

// abandon deletes a pod that will not be used and returns cause; if the pod cannot be
// deleted, it stays in the stack (ResourceInitFailedError) so that a destroy removes it.
func (r *RunPodPod) abandon(ctx context.Context, client *runpod.Client, state RunPodPodState, cause error) (infer.CreateResponse[RunPodPodState], error) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), runPodGoneTimeout)
	defer cancel()
	if err := client.DeletePod(dctx, state.PodID); err != nil {
		return infer.CreateResponse[RunPodPodState]{ID: state.PodID, Output: state}, infer.ResourceInitFailedError{Reasons: []string{
			cause.Error(), fmt.Sprintf("delete pod %s: %v", state.PodID, err)}}
	}
	return infer.CreateResponse[RunPodPodState]{}, cause
}

// Diff replaces the pod on any change of its inputs.
func (r *RunPodPod) Diff(ctx context.Context, req infer.DiffRequest[RunPodPodArgs, RunPodPodState]) (infer.DiffResponse, error) {
	o, n := req.State.RunPodPodArgs.withDefaults(), req.Inputs.withDefaults()
	d := replaceOnAnyChange(map[string]bool{
		"name": o.Name != n.Name, "gpuType": o.GPUType != n.GPUType, "gpuCount": o.GPUCount != n.GPUCount,
		"image": o.Image != n.Image, "cloud": o.Cloud != n.Cloud, "dataCenterIds": !slices.Equal(o.DataCenterIDs, n.DataCenterIDs),
		"diskGb": o.DiskGB != n.DiskGB, "spot": o.Spot != n.Spot, "onDemandFallback": o.OnDemandFallback != n.OnDemandFallback,
		"authorizedKeys": !slices.Equal(o.AuthorizedKeys, n.AuthorizedKeys), "hostPrivateKey": o.HostPrivateKey != n.HostPrivateKey,
		"workDir": o.WorkDir != n.WorkDir, "leaseSeconds": o.LeaseSeconds != n.LeaseSeconds, "deadline": o.Deadline != n.Deadline,
		"apiUrl": o.APIURL != n.APIURL, "readyTimeoutSeconds": o.ReadyTimeout != n.ReadyTimeout, "tags": !maps.Equal(o.Tags, n.Tags),
	})
	return infer.DiffResponse{HasChanges: d.has, DetailedDiff: d.detailed}, nil
}

// Read reports the pod as RunPod sees it. A pod that is gone (deleted, terminated) is
// reported with an empty ID so that a refresh drops it from the stack; an EXITED pod (a spot
// pod RunPod interrupted, or one whose dead-man's switch fired) stays, not running.
func (r *RunPodPod) Read(ctx context.Context, req infer.ReadRequest[RunPodPodArgs, RunPodPodState]) (infer.ReadResponse[RunPodPodArgs, RunPodPodState], error) {
	state := req.State
	if req.ID == "" {
		return infer.ReadResponse[RunPodPodArgs, RunPodPodState]{}, nil
	}
	client, err := runPodClient(state.withDefaults().APIURL)
	if err != nil {
		return infer.ReadResponse[RunPodPodArgs, RunPodPodState]{}, err
	}
	pod, err := client.GetPod(ctx, req.ID)
	if cloudapi.IsNotFound(err) || (err == nil && pod.Status == runpod.StatusTerminated) {
		return infer.ReadResponse[RunPodPodArgs, RunPodPodState]{}, nil
	}
	if err != nil {
		return infer.ReadResponse[RunPodPodArgs, RunPodPodState]{}, err
	}
	state.PodID = pod.ID
	state.Status = pod.Status
	state.Running = pod.Running()
	if state.Running {
		state.Host, state.Port = pod.SSH.Direct.Host, pod.SSH.Direct.Port
		if pod.Cost > 0 {
			state.HourlyPrice = pod.Cost
		}
	}
	return infer.ReadResponse[RunPodPodArgs, RunPodPodState]{ID: req.ID, Inputs: req.Inputs, State: state}, nil
}

// Delete terminates the pod and waits until RunPod no longer has it. A pod that is already
// gone is success.
func (r *RunPodPod) Delete(ctx context.Context, req infer.DeleteRequest[RunPodPodState]) (infer.DeleteResponse, error) {
	if req.ID == "" {
		return infer.DeleteResponse{}, nil
	}
	client, err := runPodClient(req.State.withDefaults().APIURL)
	if err != nil {
		return infer.DeleteResponse{}, err
	}
	status(ctx, "deleting pod %s", req.ID)
	if err := client.DeletePod(ctx, req.ID); err != nil {
		return infer.DeleteResponse{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, runPodGoneTimeout)
	defer cancel()
	if err := client.WaitGone(wctx, req.ID); err != nil {
		return infer.DeleteResponse{}, fmt.Errorf("pod %s was deleted but still exists: %w", req.ID, err)
	}
	info(ctx, "pod %s deleted", req.ID)
	return infer.DeleteResponse{}, nil
}
