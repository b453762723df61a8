package programs

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/pulumi/pulumi-gcp/sdk/v7/go/gcp/compute"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/understudy-ai/training-service/provider/boot"
)

// Tokens of the GCP resources the "gcp" program registers.
const (
	GCPInstanceType = "gcp:compute/instance:Instance"
	GCPFirewallType = "gcp:compute/firewall:Firewall"
)

// GCP defaults.
const (
	// GCPDefaultGPUType is the accelerator of a job that names none: an L4 (24 GB) on a
	// g2-standard-8, the cheapest current GPU that fits a 7B-parameter LoRA fine-tune, and
	// widely available.
	GCPDefaultGPUType = "nvidia-l4"
	// GCPDefaultImage is Google's Deep Learning VM image family with CUDA 12.4 and the
	// NVIDIA driver (Debian 11, Python 3.10). It runs startup scripts but not cloud-init.
	GCPDefaultImage   = "projects/deeplearning-platform-release/global/images/family/common-cu124-debian-11-py310"
	GCPDefaultNetwork = "default"
	GCPDefaultDiskGB  = 100
	GCPDefaultUser    = "understudy"
	GCPDefaultWorkDir = "/home/understudy/understudy"
)

// GCPPluginVersion is the version of the "gcp" resource plugin that the GCP SDK in go.mod
// registers its resources with; stacks installs exactly this one.
const GCPPluginVersion = "7.38.0"

func init() { Register("gcp", gcpDriver{}) }

// GCPConfig configures the "gcp" program. Empty fields take the defaults. Credentials come
// from the Google provider's usual environment (GOOGLE_APPLICATION_CREDENTIALS, …).
type GCPConfig struct {
	Project string // GOOGLE_PROJECT; required
	Zone    string // GOOGLE_ZONE; required
	// MachineType is the machine type; default derived from the GPU: n1-standard-8 per GPU
	// for nvidia-tesla-t4/-p4/-p100/-v100, g2-standard-8 for nvidia-l4, a2-highgpu-<n>g for
	// nvidia-tesla-a100, a2-ultragpu-<n>g for nvidia-a100-80gb, a3-highgpu-<n>g for
	// nvidia-h100-80gb. An accelerator-optimized type (a2-, a3-, g2-) has its GPUs built in;
	// it is used only for the GPU it carries.
	MachineType string
	// GPUType is the accelerator type when the job names none (a job's gpu_type is a GCP
	// accelerator type); default GCPDefaultGPUType.
	GPUType  string
	GPUCount int    // default 1
	Image    string // boot image or image family; default GCPDefaultImage
	// Network is the VPC network; default GCPDefaultNetwork. Subnetwork is optional.
	Network     string
	Subnetwork  string
	DiskGB      int     // boot disk; default GCPDefaultDiskGB
	User        string  // login user made from the ssh-keys metadata; default GCPDefaultUser
	WorkDir     string  // base directory for jobs on the machine; default GCPDefaultWorkDir
	HourlyPrice float64 // USD/h override; 0: the table's on-demand price, 0 if unknown
}

var (
	gcpAcceleratorPattern = regexp.MustCompile(`^nvidia-[a-z0-9-]{1,40}$`)
	gcpMachineTypePattern = regexp.MustCompile(`^[a-z][a-z0-9]*-[a-z0-9-]{1,40}$`)
	gcpProjectPattern     = regexp.MustCompile(`^[a-z][a-z0-9-]{4,28}[a-z0-9]$`)
	gcpZonePattern        = regexp.MustCompile(`^[a-z]+-[a-z]+[0-9]+-[a-z]$`)
	gcpResourcePattern    = regexp.MustCompile(`^[A-Za-z0-9/_.:-]{1,256}$`)
	gcpLabelInvalid       = regexp.MustCompile(`[^a-z0-9_-]`)
)

// gcpDriver provisions per job a Compute Engine instance with a GPU, whose startup script
// installs the service's host key and arms the dead-man's switch, and a firewall pair that
// admits SSH from the service only to the job's network tag and denies everything else
// inbound (the default network's own allow rules included).
type gcpDriver struct{}

func (gcpDriver) MachineType() string { return GCPInstanceType }

func (gcpDriver) Plugin() (string, string) { return "gcp", GCPPluginVersion }

func (gcpDriver) Validate(spec Spec) error {
	c := spec.GCP
	if c.Project == "" {
		return errors.New("GCP.Project (GOOGLE_PROJECT) is required")
	}
	if !gcpProjectPattern.MatchString(c.Project) {
		return fmt.Errorf("GCP.Project %q: not a project id", c.Project)
	}
	if c.Zone == "" {
		return errors.New("GCP.Zone (GOOGLE_ZONE) is required")
	}
	if !gcpZonePattern.MatchString(c.Zone) {
		return fmt.Errorf("GCP.Zone %q: want a zone such as us-central1-a", c.Zone)
	}
	if err := checkIngress(spec.SSHIngressCIDRs); err != nil {
		return err
	}
	if len(ipv4Ranges(spec.SSHIngressCIDRs)) == 0 {
		return errors.New("SSHIngressCIDRs: the gcp program needs an IPv4 range: its instance has an IPv4 address only")
	}
	if err := refuseFallback(spec); err != nil {
		return err
	}
	if t := spec.Machine.GPUType; t != "" && !gcpAcceleratorPattern.MatchString(t) {
		return fmt.Errorf("gpu_type %q: want a GCP accelerator type such as nvidia-l4", t)
	}
	if c.GPUType != "" && !gcpAcceleratorPattern.MatchString(c.GPUType) {
		return fmt.Errorf("GCP.GPUType %q: want an accelerator type such as nvidia-l4", c.GPUType)
	}
	if c.MachineType != "" && !gcpMachineTypePattern.MatchString(c.MachineType) {
		return fmt.Errorf("GCP.MachineType %q: want a machine type such as g2-standard-8", c.MachineType)
	}
	if c.GPUCount < 0 || c.GPUCount > 16 {
		return fmt.Errorf("GCP.GPUCount %d: want 1-16 (0 for the default)", c.GPUCount)
	}
	for field, v := range map[string]string{"GCP.Image": c.Image, "GCP.Network": c.Network, "GCP.Subnetwork": c.Subnetwork} {
		if v != "" && !gcpResourcePattern.MatchString(v) {
			return fmt.Errorf("%s %q: not a resource name or URL", field, v)
		}
	}
	if c.DiskGB < 0 || c.DiskGB > 65536 {
		return fmt.Errorf("GCP.DiskGB %d: want 10-65536 (0 for the default)", c.DiskGB)
	}
	if c.User != "" && !unixUserPattern.MatchString(c.User) {
		return fmt.Errorf("GCP.User %q: not a user name", c.User)
	}
	if c.WorkDir != "" {
		if err := checkWorkDir("GCP.WorkDir", c.WorkDir); err != nil {
			return err
		}
	}
	if c.HourlyPrice < 0 {
		return errors.New("GCP.HourlyPrice: must not be negative")
	}
	return nil
}

// gcpBuiltinGPU is the accelerator an accelerator-optimized machine type carries, and how
// many; "" for a type that takes attached accelerators.
func gcpBuiltinGPU(machineType string) (string, int) {
	count := 1
	if i := strings.LastIndex(machineType, "-"); i >= 0 {
		var n int
		if _, err := fmt.Sscanf(machineType[i+1:], "%dg", &n); err == nil && n > 0 {
			count = n
		}
	}
	switch {
	case strings.HasPrefix(machineType, "a2-ultragpu-"):
		return "nvidia-a100-80gb", count
	case strings.HasPrefix(machineType, "a2-"):
		return "nvidia-tesla-a100", count
	case strings.HasPrefix(machineType, "a3-"):
		return "nvidia-h100-80gb", count
	case strings.HasPrefix(machineType, "g2-"):
		switch machineType {
		case "g2-standard-24":
			return "nvidia-l4", 2
		case "g2-standard-48":
			return "nvidia-l4", 4
		case "g2-standard-96":
			return "nvidia-l4", 8
		}
		return "nvidia-l4", 1
	}
	return "", 0
}

// gcpMachineFor derives the machine type for count accelerators of type gpu.
func gcpMachineFor(gpu string, count int) string {
	switch gpu {
	case "nvidia-l4":
		switch {
		case count >= 8:
			return "g2-standard-96"
		case count >= 4:
			return "g2-standard-48"
		case count >= 2:
			return "g2-standard-24"
		}
		return "g2-standard-8"
	case "nvidia-tesla-a100":
		return fmt.Sprintf("a2-highgpu-%dg", count)
	case "nvidia-a100-80gb":
		return fmt.Sprintf("a2-ultragpu-%dg", count)
	case "nvidia-h100-80gb":
		return fmt.Sprintf("a3-highgpu-%dg", count)
	}
	return fmt.Sprintf("n1-standard-%d", min(8*count, 96))
}

// gcpMachine decides the machine type, the accelerator to attach (none for an
// accelerator-optimized type) and the GPU the machine ends up with.
func gcpMachine(spec Spec) (machine, attach, gpu string, count int) {
	c := spec.GCP
	gpu = defaultString(spec.Machine.GPUType, c.GPUType, GCPDefaultGPUType)
	count = defaultInt(c.GPUCount, 1)
	machine = c.MachineType
	if machine != "" {
		builtin, n := gcpBuiltinGPU(machine)
		needsBuiltin, _ := gcpBuiltinGPU(gcpMachineFor(gpu, count))
		switch {
		case builtin != "" && (builtin == gpu || spec.Machine.GPUType == ""):
			return machine, "", builtin, n
		case builtin == "" && needsBuiltin == "":
			return machine, gpu, gpu, count
		}
		// The configured type cannot carry the job's GPU: derive one that can.
	}
	machine = gcpMachineFor(gpu, count)
	if builtin, n := gcpBuiltinGPU(machine); builtin != "" {
		return machine, "", builtin, n
	}
	return machine, gpu, gpu, count
}

// GCPLabels turns tags into GCP labels: keys and values lowercase, characters other than
// [a-z0-9_-] replaced by '_', at most 63 characters, keys starting with a letter.
func GCPLabels(tags map[string]string) map[string]string {
	out := make(map[string]string, len(tags))
	clean := func(s string) string {
		s = gcpLabelInvalid.ReplaceAllString(strings.ToLower(s), "_")
		if len(s) > 63 {
			s = s[:63]
		}
		return s
	}
	for k, v := range tags {
		k = clean(k)
		if k == "" || k[0] < 'a' || k[0] > 'z' {
			k = clean("k" + k)
		}
		out[k] = clean(v)
	}
	return out
}

func (gcpDriver) Deploy(ctx *pulumi.Context, spec Spec) (Exports, error) {
	c := spec.GCP
	machine, attach, gpu, count := gcpMachine(spec)
	user := defaultString(c.User, GCPDefaultUser)
	wd := machineWorkDir(defaultString(c.WorkDir, GCPDefaultWorkDir), spec.TrainID)
	network := defaultString(c.Network, GCPDefaultNetwork)
	name := CloudName(spec.TrainID, 63)
	// The firewall rules reach the instance through this network tag, the job's own.
	target := name
	labels := pulumi.ToStringMap(GCPLabels(Tags(spec)))
	// The instance has an IPv4 address only: IPv6 ranges could not reach it anyway.
	sources := pulumi.ToStringArray(ipv4Ranges(spec.SSHIngressCIDRs))

	allow, err := compute.NewFirewall(ctx, "ssh", &compute.FirewallArgs{
		Project:      pulumi.String(c.Project),
		Name:         pulumi.String(CloudName(spec.TrainID, 63-len("-ssh")) + "-ssh"),
		Description:  pulumi.String("understudy training job " + spec.TrainID + ": SSH from the service"),
		Network:      pulumi.String(network),
		Direction:    pulumi.String("INGRESS"),
		Priority:     pulumi.Int(900),
		SourceRanges: sources,
		TargetTags:   pulumi.StringArray{pulumi.String(target)},
		Allows:       compute.FirewallAllowArray{compute.FirewallAllowArgs{Protocol: pulumi.String("tcp"), Ports: pulumi.StringArray{pulumi.String("22")}}},
	})
	if err != nil {
		return Exports{}, fmt.Errorf("register ssh firewall: %w", err)
	}
	// The default network admits SSH, RDP and ICMP from anywhere (priority 65534) and all
	// traffic from inside the network: this rule, below the SSH rule, shuts all of it out.
	deny, err := compute.NewFirewall(ctx, "deny-inbound", &compute.FirewallArgs{
		Project:      pulumi.String(c.Project),
		Name:         pulumi.String(CloudName(spec.TrainID, 63-len("-deny")) + "-deny"),
		Description:  pulumi.String("understudy training job " + spec.TrainID + ": nothing else inbound"),
		Network:      pulumi.String(network),
		Direction:    pulumi.String("INGRESS"),
		Priority:     pulumi.Int(910),
		SourceRanges: pulumi.StringArray{pulumi.String("0.0.0.0/0")},
		TargetTags:   pulumi.StringArray{pulumi.String(target)},
		Denies:       compute.FirewallDenyArray{compute.FirewallDenyArgs{Protocol: pulumi.String("all")}},
	})
	if err != nil {
		return Exports{}, fmt.Errorf("register deny firewall: %w", err)
	}

	lease := ""
	if spec.LeaseSeconds > 0 {
		lease = leaseFile(wd)
	}
	script, err := boot.StartupScript(boot.Machine{
		HostPrivateKey: spec.HostPrivateKey,
		Lease:          boot.Lease{File: leaseFile(wd), Seconds: spec.LeaseSeconds, Deadline: int64(deadlineUnix(spec))},
	})
	if err != nil {
		return Exports{}, fmt.Errorf("render startup script: %w", err)
	}

	ni := compute.InstanceNetworkInterfaceArgs{
		Network: pulumi.String(network),
		// An empty access config is an ephemeral external address: the host to dial.
		AccessConfigs: compute.InstanceNetworkInterfaceAccessConfigArray{compute.InstanceNetworkInterfaceAccessConfigArgs{}},
	}
	if c.Subnetwork != "" {
		ni.Subnetwork = pulumi.String(c.Subnetwork)
	}
	sched := &compute.InstanceSchedulingArgs{
		// Required with GPUs: a GPU machine cannot live-migrate.
		OnHostMaintenance: pulumi.String("TERMINATE"),
		// A machine stopped for maintenance has lost the job's run: it stays stopped, and
		// the service sees it gone rather than reconnecting to an empty machine.
		AutomaticRestart: pulumi.Bool(false),
	}
	if spec.Machine.Spot {
		sched.ProvisioningModel = pulumi.String("SPOT")
		sched.Preemptible = pulumi.Bool(true)
		sched.InstanceTerminationAction = pulumi.String("DELETE")
	}
	args := &compute.InstanceArgs{
		Project:     pulumi.String(c.Project),
		Zone:        pulumi.String(c.Zone),
		Name:        pulumi.String(name),
		Description: pulumi.String("understudy training job " + spec.TrainID),
		MachineType: pulumi.String(machine),
		BootDisk: compute.InstanceBootDiskArgs{
			AutoDelete: pulumi.Bool(true),
			InitializeParams: &compute.InstanceBootDiskInitializeParamsArgs{
				Image:  pulumi.String(defaultString(c.Image, GCPDefaultImage)),
				Size:   pulumi.Int(defaultInt(c.DiskGB, GCPDefaultDiskGB)),
				Labels: labels,
			},
		},
		NetworkInterfaces: compute.InstanceNetworkInterfaceArray{ni},
		Scheduling:        sched,
		Tags:              pulumi.StringArray{pulumi.String(target)},
		Labels:            labels,
		Metadata: pulumi.StringMap{
			"ssh-keys": pulumi.String(user + ":" + strings.TrimSpace(spec.AuthorizedKey)),
			// Keys come from this instance's metadata only: no project-wide keys, no OS Login.
			"block-project-ssh-keys": pulumi.String("TRUE"),
			"enable-oslogin":         pulumi.String("FALSE"),
			// Deep Learning VM images install the driver at first boot when asked.
			"install-nvidia-driver": pulumi.String("True"),
		},
		MetadataStartupScript:  pulumi.ToSecret(pulumi.String(script)).(pulumi.StringOutput),
		AllowStoppingForUpdate: pulumi.Bool(true),
	}
	if attach != "" {
		args.GuestAccelerators = compute.InstanceGuestAcceleratorArray{compute.InstanceGuestAcceleratorArgs{
			Type: pulumi.String(attach), Count: pulumi.Int(count),
		}}
	}
	inst, err := compute.NewInstance(ctx, "machine", args, pulumi.DependsOn([]pulumi.Resource{allow, deny}))
	if err != nil {
		return Exports{}, fmt.Errorf("register instance: %w", err)
	}

	hostKey, err := HostPublicKey(spec.HostPrivateKey)
	if err != nil {
		return Exports{}, err
	}
	model := gpu
	if m, ok := gcpAcceleratorModels[gpu]; ok {
		model = m
	}
	price := gcpMachinePrices[machine]
	if attach != "" && price > 0 {
		if p, ok := gcpAcceleratorPrices[attach]; ok {
			price += p * float64(count)
		} else {
			price = 0
		}
	}
	if c.HourlyPrice > 0 {
		price = c.HourlyPrice
	}
	return Exports{
		Host:         inst.NetworkInterfaces.Index(pulumi.Int(0)).AccessConfigs().Index(pulumi.Int(0)).NatIp().Elem(),
		Port:         pulumi.Int(22).ToIntOutput(),
		User:         pulumi.String(user).ToStringOutput(),
		HostKey:      pulumi.String(hostKey).ToStringOutput(),
		InstanceID:   inst.InstanceId,
		WorkDir:      pulumi.String(wd).ToStringOutput(),
		GPU:          pulumi.String(gpuModel{count, model}.String()).ToStringOutput(),
		HourlyPrice:  pulumi.Float64(price).ToFloat64Output(),
		LeaseFile:    pulumi.String(lease).ToStringOutput(),
		HostKeyTrust: pulumi.String(TrustInjected).ToStringOutput(),
	}, nil
}

// InspectMachine reads a Compute Engine instance's state: PROVISIONING, STAGING and
// RUNNING count as running; STOPPING, TERMINATED (stopped), SUSPENDED and the rest as not.
// scheduling.provisioningModel SPOT (or preemptible) marks a spot instance.
func (gcpDriver) InspectMachine(r Resource) MachineState {
	s := MachineState{Running: true}
	if v, ok := r.Outputs["currentStatus"].(string); ok && v != "" {
		s.Status = v
		s.Running = v == "RUNNING" || v == "PROVISIONING" || v == "STAGING"
	}
	if sched, ok := r.Outputs["scheduling"].(map[string]any); ok {
		model, _ := sched["provisioningModel"].(string)
		preemptible, _ := sched["preemptible"].(bool)
		s.Interruptible = model == "SPOT" || preemptible
	}
	return s
}
