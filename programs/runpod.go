package programs

import (
	"errors"
	"fmt"
	"strings"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/provider/version"
)

// RunPodPodType is the token of the in-repo provider's RunPod pod.
const RunPodPodType = "understudy:runpod:Pod"

// RunPod defaults.
const (
	RunPodDefaultGPUType = "NVIDIA GeForce RTX 4090"
	RunPodDefaultWorkDir = "/workspace/understudy"
)

func init() { Register("runpod", runPodDriver{}) }

// RunPodConfig configures the "runpod" program. Empty fields take the provider's defaults.
type RunPodConfig struct {
	APIURL        string   // RunPod's API; default https://api.runpod.io
	GPUType       string   // default GPU type id when the job names none; default RunPodDefaultGPUType
	GPUCount      int      // GPUs per pod; default 1
	Image         string   // container image; default a RunPod PyTorch image
	Cloud         string   // SECURE or COMMUNITY; default SECURE
	DataCenterIDs []string // preferred data centers
	DiskGB        int      // container disk; default 50
	// WorkDir is the base directory for jobs on the pod; default RunPodDefaultWorkDir.
	WorkDir string
	// OperatorKey is an operator's public key, authorised beside the job's own for
	// debugging (RUNPOD_SSH_PUBLIC_KEY). The service never logs in with it.
	OperatorKey string
}

// runPodDriver provisions one understudy:runpod:Pod per job.
type runPodDriver struct{}

// runPodPod is the client side of understudy:runpod:Pod.
type runPodPod struct {
	pulumi.CustomResourceState

	PodID         pulumi.StringOutput  `pulumi:"podId"`
	Host          pulumi.StringOutput  `pulumi:"host"`
	Port          pulumi.IntOutput     `pulumi:"port"`
	User          pulumi.StringOutput  `pulumi:"user"`
	HostPublicKey pulumi.StringOutput  `pulumi:"hostPublicKey"`
	HostKeyTrust  pulumi.StringOutput  `pulumi:"hostKeyTrust"`
	HourlyPrice   pulumi.Float64Output `pulumi:"hourlyPrice"`
	GPU           pulumi.StringOutput  `pulumi:"gpu"`
}

func (runPodDriver) MachineType() string { return RunPodPodType }

func (runPodDriver) Validate(spec Spec) error {
	c := spec.RunPod
	if c.Cloud != "" && c.Cloud != "SECURE" && c.Cloud != "COMMUNITY" {
		return fmt.Errorf("RunPod.Cloud %q: want SECURE or COMMUNITY", c.Cloud)
	}
	if c.GPUCount < 0 || c.GPUCount > 8 || c.DiskGB < 0 {
		return errors.New("RunPod.GPUCount must be 0-8 and RunPod.DiskGB not negative")
	}
	if c.WorkDir != "" {
		if err := checkWorkDir("RunPod.WorkDir", c.WorkDir); err != nil {
			return err
		}
	}
	if c.OperatorKey != "" {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(c.OperatorKey)); err != nil {
			return fmt.Errorf("RunPod.OperatorKey: %w", err)
		}
	}
	if strings.ContainsAny(spec.Machine.GPUType, "\n\x00") || len(spec.Machine.GPUType) > 100 {
		return fmt.Errorf("gpu_type %q: not a RunPod GPU type id", spec.Machine.GPUType)
	}
	return nil
}

func (runPodDriver) Deploy(ctx *pulumi.Context, spec Spec) (Exports, error) {
	c := spec.RunPod
	gpu := spec.Machine.GPUType
	if gpu == "" {
		gpu = c.GPUType
	}
	if gpu == "" {
		gpu = RunPodDefaultGPUType
	}
	base := c.WorkDir
	if base == "" {
		base = RunPodDefaultWorkDir
	}
	wd := machineWorkDir(base, spec.TrainID)
	keys := []string{spec.AuthorizedKey}
	if c.OperatorKey != "" {
		keys = append(keys, strings.TrimSpace(c.OperatorKey))
	}
	args := pulumi.Map{
		"name":             pulumi.String(MachineName(spec.TrainID)),
		"gpuType":          pulumi.String(gpu),
		"spot":             pulumi.Bool(spec.Machine.Spot),
		"onDemandFallback": pulumi.Bool(spec.Machine.OnDemandFallback),
		"authorizedKeys":   pulumi.ToStringArray(keys),
		"hostPrivateKey":   pulumi.ToSecret(pulumi.String(spec.HostPrivateKey)),
		"workDir":          pulumi.String(wd),
		"leaseSeconds":     pulumi.Int(spec.LeaseSeconds),
		"deadline":         pulumi.Int(deadlineUnix(spec)),
		"tags":             pulumi.ToStringMap(Tags(spec)),
	}
	optional := map[string]pulumi.Input{}
	if c.APIURL != "" {
		optional["apiUrl"] = pulumi.String(c.APIURL)
	}
	if c.GPUCount > 0 {
		optional["gpuCount"] = pulumi.Int(c.GPUCount)
	}
	if c.Image != "" {
		optional["image"] = pulumi.String(c.Image)
	}
	if c.Cloud != "" {
		optional["cloud"] = pulumi.String(c.Cloud)
	}
	if len(c.DataCenterIDs) > 0 {
		optional["dataCenterIds"] = pulumi.ToStringArray(c.DataCenterIDs)
	}
	if c.DiskGB > 0 {
		optional["diskGb"] = pulumi.Int(c.DiskGB)
	}
	for k, v := range optional {
		args[k] = v
	}
	var pod runPodPod
	if err := ctx.RegisterResource(RunPodPodType, "machine", args, &pod, pulumi.Version(version.Version)); err != nil {
		return Exports{}, fmt.Errorf("register runpod pod: %w", err)
	}
	lease := ""
	if spec.LeaseSeconds > 0 {
		lease = leaseFile(wd)
	}
	return Exports{
		Host:         pod.Host,
		Port:         pod.Port,
		User:         pod.User,
		HostKey:      pod.HostPublicKey,
		InstanceID:   pod.PodID,
		WorkDir:      pulumi.String(wd).ToStringOutput(),
		GPU:          pod.GPU,
		HourlyPrice:  pod.HourlyPrice,
		LeaseFile:    pulumi.String(lease).ToStringOutput(),
		HostKeyTrust: pod.HostKeyTrust,
	}, nil
}
