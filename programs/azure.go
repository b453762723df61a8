package programs

import (
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/pulumi/pulumi-azure-native-sdk/compute/v2"
	"github.com/pulumi/pulumi-azure-native-sdk/devtestlab/v2"
	"github.com/pulumi/pulumi-azure-native-sdk/network/v2"
	"github.com/pulumi/pulumi-azure-native-sdk/resources/v2"
	azurenative "github.com/pulumi/pulumi-azure-native-sdk/v2"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/understudy-ai/training-service/provider/boot"
)

// Tokens of the Azure resources the "azure" program registers.
const (
	AzureVirtualMachineType   = "azure-native:compute:VirtualMachine"
	AzureResourceGroupType    = "azure-native:resources:ResourceGroup"
	AzureVirtualNetworkType   = "azure-native:network:VirtualNetwork"
	AzureSubnetType           = "azure-native:network:Subnet"
	AzureSecurityGroupType    = "azure-native:network:NetworkSecurityGroup"
	AzurePublicIPAddressType  = "azure-native:network:PublicIPAddress"
	AzureNetworkInterfaceType = "azure-native:network:NetworkInterface"
	AzureShutdownScheduleType = "azure-native:devtestlab:GlobalSchedule"
)

// Azure defaults.
const (
	AzureDefaultVMSize = "Standard_NC4as_T4_v3"
	// AzureDefaultImage is Microsoft's Data Science VM for Ubuntu 22.04 (generation 2): the
	// NVIDIA driver and CUDA installed, cloud-init for custom data.
	AzureDefaultImage   = "microsoft-dsvm:ubuntu-2204:2204-gen2:latest"
	AzureDefaultDiskGB  = 128
	AzureDefaultUser    = "understudy"
	AzureDefaultWorkDir = "/home/understudy/understudy"
)

// AzureNativePluginVersion is the version of the "azure-native" resource plugin that the
// Azure Native SDK in go.mod registers its resources with; stacks installs exactly this one.
const AzureNativePluginVersion = "2.90.0"

func init() { Register("azure", azureDriver{}) }

// AzureConfig configures the "azure" program. Empty fields take the defaults. Credentials
// come from the Azure Native provider's usual environment (ARM_CLIENT_ID, ARM_CLIENT_SECRET,
// ARM_TENANT_ID, managed identity, …).
type AzureConfig struct {
	SubscriptionID string // AZURE_SUBSCRIPTION_ID; required
	Location       string // AZURE_LOCATION; required
	// ResourceGroup (AZURE_RESOURCE_GROUP) is an existing group to create the job's
	// resources in instead of a group per job; destroy then removes them one by one.
	ResourceGroup string
	// OperatorKeyName (AZURE_SSH_KEY_NAME) is an operator's SSH public key resource
	// (Microsoft.Compute/sshPublicKeys) authorised beside the job's key for debugging,
	// looked up in OperatorKeyGroup. The service never logs in with it.
	OperatorKeyName string
	// OperatorKeyGroup (AZURE_SSH_KEY_RESOURCE_GROUP) holds OperatorKeyName; default ResourceGroup.
	OperatorKeyGroup string
	VMSize           string  // default AzureDefaultVMSize; a job's gpu_type is a VM size
	Image            string  // "publisher:offer:sku:version"; default AzureDefaultImage
	DiskGB           int     // OS disk; default AzureDefaultDiskGB
	User             string  // admin user; default AzureDefaultUser
	WorkDir          string  // base directory for jobs on the machine; default AzureDefaultWorkDir
	HourlyPrice      float64 // USD/h override; 0: the table's pay-as-you-go price, 0 if unknown
}

var (
	azureVMSizePattern   = regexp.MustCompile(`^Standard_[A-Za-z0-9_]{2,60}$`)
	azureGUIDPattern     = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	azureLocationPattern = regexp.MustCompile(`^[a-z][a-z0-9]{2,40}$`)
	azureGroupPattern    = regexp.MustCompile(`^[-\w._()]{1,90}$`)
	azureKeyNamePattern  = regexp.MustCompile(`^[-\w._]{1,80}$`)
	azureImagePart       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$`)
	// Azure refuses these admin user names on Linux.
	azureReservedUsers = map[string]bool{"admin": true, "administrator": true, "root": true, "guest": true,
		"user": true, "test": true, "sys": true, "support": true, "owner": true, "console": true}
)

// azureDriver provisions per job (in a resource group of its own unless
// AzureConfig.ResourceGroup names one) a virtual network and subnet, a network security
// group admitting SSH from the service only, a static Standard public IP, a network
// interface and a GPU virtual machine whose custom data (cloud-init) installs the service's
// host key and arms the dead-man's switch, and an auto-shutdown schedule for the machine.
type azureDriver struct{}

func (azureDriver) MachineType() string { return AzureVirtualMachineType }

func (azureDriver) Plugin() (string, string) { return "azure-native", AzureNativePluginVersion }

func (azureDriver) Validate(spec Spec) error {
	c := spec.Azure
	if c.SubscriptionID == "" {
		return errors.New("Azure.SubscriptionID (AZURE_SUBSCRIPTION_ID) is required")
	}
	if !azureGUIDPattern.MatchString(c.SubscriptionID) {
		return fmt.Errorf("Azure.SubscriptionID %q: want a subscription id (a GUID)", c.SubscriptionID)
	}
	if c.Location == "" {
		return errors.New("Azure.Location (AZURE_LOCATION) is required")
	}
	if !azureLocationPattern.MatchString(c.Location) {
		return fmt.Errorf("Azure.Location %q: want a location such as eastus", c.Location)
	}
	if err := checkIngress(spec.SSHIngressCIDRs); err != nil {
		return err
	}
	if len(ipv4Ranges(spec.SSHIngressCIDRs)) == 0 {
		return errors.New("SSHIngressCIDRs: the azure program needs an IPv4 range: its machine has an IPv4 address only")
	}
	if err := refuseFallback(spec); err != nil {
		return err
	}
	if t := spec.Machine.GPUType; t != "" && !azureVMSizePattern.MatchString(t) {
		return fmt.Errorf("gpu_type %q: want an Azure VM size such as Standard_NC4as_T4_v3", t)
	}
	if c.VMSize != "" && !azureVMSizePattern.MatchString(c.VMSize) {
		return fmt.Errorf("Azure.VMSize %q: want a VM size such as Standard_NC4as_T4_v3", c.VMSize)
	}
	if c.ResourceGroup != "" && !azureGroupPattern.MatchString(c.ResourceGroup) {
		return fmt.Errorf("Azure.ResourceGroup %q: not a resource group name", c.ResourceGroup)
	}
	if c.OperatorKeyGroup != "" && !azureGroupPattern.MatchString(c.OperatorKeyGroup) {
		return fmt.Errorf("Azure.OperatorKeyGroup %q: not a resource group name", c.OperatorKeyGroup)
	}
	if c.OperatorKeyName != "" {
		if !azureKeyNamePattern.MatchString(c.OperatorKeyName) {
			return fmt.Errorf("Azure.OperatorKeyName %q: not an SSH public key resource name", c.OperatorKeyName)
		}
		if defaultString(c.OperatorKeyGroup, c.ResourceGroup) == "" {
			return errors.New("Azure.OperatorKeyGroup (AZURE_SSH_KEY_RESOURCE_GROUP): required with Azure.OperatorKeyName when Azure.ResourceGroup is not set")
		}
	}
	if c.Image != "" {
		if _, err := parseAzureImage(c.Image); err != nil {
			return err
		}
	}
	if c.DiskGB < 0 || c.DiskGB > 4095 {
		return fmt.Errorf("Azure.DiskGB %d: want 30-4095 (0 for the default)", c.DiskGB)
	}
	if c.User != "" && (!unixUserPattern.MatchString(c.User) || azureReservedUsers[c.User]) {
		return fmt.Errorf("Azure.User %q: not a user name Azure accepts", c.User)
	}
	if c.WorkDir != "" {
		if err := checkWorkDir("Azure.WorkDir", c.WorkDir); err != nil {
			return err
		}
	}
	if c.HourlyPrice < 0 {
		return errors.New("Azure.HourlyPrice: must not be negative")
	}
	return nil
}

type azureImage struct{ publisher, offer, sku, version string }

func parseAzureImage(s string) (azureImage, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 4 {
		return azureImage{}, fmt.Errorf("Azure.Image %q: want publisher:offer:sku:version", s)
	}
	for _, p := range parts {
		if !azureImagePart.MatchString(p) {
			return azureImage{}, fmt.Errorf("Azure.Image %q: want publisher:offer:sku:version", s)
		}
	}
	return azureImage{parts[0], parts[1], parts[2], parts[3]}, nil
}

// azureShutdown returns the time of day (UTC, "HHmm") of the machine's auto-shutdown and
// whether the schedule is enabled. The schedule is daily: it stops (and deallocates) the
// machine the first time that time of day comes round, so it can only serve jobs that end
// within a day.
//   - A deadline at most 23 hours ahead: an hour after it.
//   - No deadline: 23 hours 50 minutes after the machine is made, a backstop of a day; a
//     longer Azure job sets max_duration_seconds.
//   - A deadline further ahead: disabled, as any time of day would stop the job before its
//     deadline; the lease's watchdog and the reaper remain.
func azureShutdown(spec Spec, now time.Time) (hhmm string, enabled bool) {
	switch {
	case spec.Deadline.IsZero():
		return now.UTC().Add(23*time.Hour + 50*time.Minute).Format("1504"), true
	case spec.Deadline.Sub(now) <= 23*time.Hour:
		return spec.Deadline.UTC().Add(time.Hour).Format("1504"), true
	default:
		return spec.Deadline.UTC().Add(time.Hour).Format("1504"), false
	}
}

// clock is time.Now, replaceable in tests.
var clock = time.Now

func (azureDriver) Deploy(ctx *pulumi.Context, spec Spec) (Exports, error) {
	c := spec.Azure
	size := defaultString(spec.Machine.GPUType, c.VMSize, AzureDefaultVMSize)
	user := defaultString(c.User, AzureDefaultUser)
	wd := machineWorkDir(defaultString(c.WorkDir, AzureDefaultWorkDir), spec.TrainID)
	img, err := parseAzureImage(defaultString(c.Image, AzureDefaultImage))
	if err != nil {
		return Exports{}, err
	}
	base := CloudName(spec.TrainID, 64)
	// Suffixed names stay unique: base is, and the suffixes differ.
	named := func(suffix string) string { return CloudName(spec.TrainID, 80-len(suffix)) + suffix }
	tags := pulumi.ToStringMap(Tags(spec))

	prov, err := azurenative.NewProvider(ctx, "azure-native", &azurenative.ProviderArgs{
		SubscriptionId: pulumi.String(c.SubscriptionID),
		Location:       pulumi.String(c.Location),
	})
	if err != nil {
		return Exports{}, fmt.Errorf("register azure-native provider: %w", err)
	}
	opts := []pulumi.ResourceOption{pulumi.Provider(prov)}

	group := pulumi.String(c.ResourceGroup).ToStringOutput()
	if c.ResourceGroup == "" {
		rg, err := resources.NewResourceGroup(ctx, "group", &resources.ResourceGroupArgs{
			ResourceGroupName: pulumi.String(named("-rg")),
			Location:          pulumi.String(c.Location),
			Tags:              tags,
		}, opts...)
		if err != nil {
			return Exports{}, fmt.Errorf("register resource group: %w", err)
		}
		group = rg.Name
	}

	keys := compute.SshPublicKeyTypeArray{compute.SshPublicKeyTypeArgs{
		KeyData: pulumi.String(strings.TrimSpace(spec.AuthorizedKey)),
		Path:    pulumi.String("/home/" + user + "/.ssh/authorized_keys"),
	}}
	if c.OperatorKeyName != "" {
		op, err := compute.LookupSshPublicKey(ctx, &compute.LookupSshPublicKeyArgs{
			ResourceGroupName: defaultString(c.OperatorKeyGroup, c.ResourceGroup),
			SshPublicKeyName:  c.OperatorKeyName,
		}, pulumi.Provider(prov))
		if err != nil {
			return Exports{}, fmt.Errorf("look up operator ssh key %s: %w", c.OperatorKeyName, err)
		}
		if op.PublicKey == nil || strings.TrimSpace(*op.PublicKey) == "" {
			return Exports{}, fmt.Errorf("operator ssh key %s holds no public key", c.OperatorKeyName)
		}
		keys = append(keys, compute.SshPublicKeyTypeArgs{
			KeyData: pulumi.String(strings.TrimSpace(*op.PublicKey)),
			Path:    pulumi.String("/home/" + user + "/.ssh/authorized_keys"),
		})
	}

	vnet, err := network.NewVirtualNetwork(ctx, "network", &network.VirtualNetworkArgs{
		ResourceGroupName:  group,
		VirtualNetworkName: pulumi.String(named("-vnet")),
		Location:           pulumi.String(c.Location),
		AddressSpace:       &network.AddressSpaceArgs{AddressPrefixes: pulumi.StringArray{pulumi.String("10.0.0.0/16")}},
		Tags:               tags,
	}, opts...)
	if err != nil {
		return Exports{}, fmt.Errorf("register virtual network: %w", err)
	}
	subnet, err := network.NewSubnet(ctx, "subnet", &network.SubnetArgs{
		ResourceGroupName:  group,
		VirtualNetworkName: vnet.Name,
		SubnetName:         pulumi.String(named("-subnet")),
		AddressPrefix:      pulumi.String("10.0.0.0/24"),
	}, opts...)
	if err != nil {
		return Exports{}, fmt.Errorf("register subnet: %w", err)
	}
	nsg, err := network.NewNetworkSecurityGroup(ctx, "ssh", &network.NetworkSecurityGroupArgs{
		ResourceGroupName:        group,
		NetworkSecurityGroupName: pulumi.String(named("-nsg")),
		Location:                 pulumi.String(c.Location),
		SecurityRules: network.SecurityRuleTypeArray{
			network.SecurityRuleTypeArgs{
				Name:        pulumi.String("allow-ssh-from-service"),
				Description: pulumi.String("SSH from the understudy service"),
				Direction:   pulumi.String("Inbound"),
				Access:      pulumi.String("Allow"),
				Priority:    pulumi.Int(100),
				Protocol:    pulumi.String("Tcp"),
				// The public IP is IPv4: IPv6 ranges could not reach it anyway.
				SourceAddressPrefixes:    pulumi.ToStringArray(ipv4Ranges(spec.SSHIngressCIDRs)),
				SourcePortRange:          pulumi.String("*"),
				DestinationAddressPrefix: pulumi.String("*"),
				DestinationPortRange:     pulumi.String("22"),
			},
			// Below every other rule of ours and above Azure's defaults (65000 and up,
			// which admit the virtual network and the load balancer).
			network.SecurityRuleTypeArgs{
				Name:                     pulumi.String("deny-all-inbound"),
				Description:              pulumi.String("nothing else inbound"),
				Direction:                pulumi.String("Inbound"),
				Access:                   pulumi.String("Deny"),
				Priority:                 pulumi.Int(4096),
				Protocol:                 pulumi.String("*"),
				SourceAddressPrefix:      pulumi.String("*"),
				SourcePortRange:          pulumi.String("*"),
				DestinationAddressPrefix: pulumi.String("*"),
				DestinationPortRange:     pulumi.String("*"),
			},
		},
		Tags: tags,
	}, opts...)
	if err != nil {
		return Exports{}, fmt.Errorf("register network security group: %w", err)
	}
	ip, err := network.NewPublicIPAddress(ctx, "address", &network.PublicIPAddressArgs{
		ResourceGroupName:        group,
		PublicIpAddressName:      pulumi.String(named("-ip")),
		Location:                 pulumi.String(c.Location),
		Sku:                      &network.PublicIPAddressSkuArgs{Name: pulumi.String("Standard"), Tier: pulumi.String("Regional")},
		PublicIPAllocationMethod: pulumi.String("Static"),
		PublicIPAddressVersion:   pulumi.String("IPv4"),
		Tags:                     tags,
	}, opts...)
	if err != nil {
		return Exports{}, fmt.Errorf("register public ip address: %w", err)
	}
	nic, err := network.NewNetworkInterface(ctx, "nic", &network.NetworkInterfaceArgs{
		ResourceGroupName:    group,
		NetworkInterfaceName: pulumi.String(named("-nic")),
		Location:             pulumi.String(c.Location),
		IpConfigurations: network.NetworkInterfaceIPConfigurationArray{network.NetworkInterfaceIPConfigurationArgs{
			Name:                      pulumi.String("ipconfig"),
			Primary:                   pulumi.Bool(true),
			PrivateIPAllocationMethod: pulumi.String("Dynamic"),
			Subnet:                    &network.SubnetTypeArgs{Id: subnet.ID().ToStringOutput()},
			PublicIPAddress:           &network.PublicIPAddressTypeArgs{Id: ip.ID().ToStringOutput()},
		}},
		NetworkSecurityGroup: &network.NetworkSecurityGroupTypeArgs{Id: nsg.ID().ToStringOutput()},
		Tags:                 tags,
	}, opts...)
	if err != nil {
		return Exports{}, fmt.Errorf("register network interface: %w", err)
	}

	lease := ""
	if spec.LeaseSeconds > 0 {
		lease = leaseFile(wd)
	}
	cloudInit, err := boot.CloudInit(boot.Machine{
		HostPrivateKey: spec.HostPrivateKey,
		AuthorizedKeys: []string{spec.AuthorizedKey},
		Lease:          boot.Lease{File: leaseFile(wd), Seconds: spec.LeaseSeconds, Deadline: int64(deadlineUnix(spec))},
	})
	if err != nil {
		return Exports{}, fmt.Errorf("render custom data: %w", err)
	}
	customData := base64.StdEncoding.EncodeToString([]byte(cloudInit))

	vmArgs := &compute.VirtualMachineArgs{
		ResourceGroupName: group,
		VmName:            pulumi.String(base),
		Location:          pulumi.String(c.Location),
		HardwareProfile:   &compute.HardwareProfileArgs{VmSize: pulumi.String(size)},
		OsProfile: &compute.OSProfileArgs{
			ComputerName:  pulumi.String(base),
			AdminUsername: pulumi.String(user),
			CustomData:    pulumi.ToSecret(pulumi.String(customData)).(pulumi.StringOutput),
			LinuxConfiguration: &compute.LinuxConfigurationArgs{
				DisablePasswordAuthentication: pulumi.Bool(true),
				Ssh:                           &compute.SshConfigurationArgs{PublicKeys: keys},
			},
		},
		StorageProfile: &compute.StorageProfileArgs{
			ImageReference: &compute.ImageReferenceArgs{
				Publisher: pulumi.String(img.publisher),
				Offer:     pulumi.String(img.offer),
				Sku:       pulumi.String(img.sku),
				Version:   pulumi.String(img.version),
			},
			OsDisk: &compute.OSDiskArgs{
				Name:         pulumi.String(named("-osdisk")),
				CreateOption: pulumi.String("FromImage"),
				DeleteOption: pulumi.String("Delete"),
				DiskSizeGB:   pulumi.Int(defaultInt(c.DiskGB, AzureDefaultDiskGB)),
				ManagedDisk:  &compute.ManagedDiskParametersArgs{StorageAccountType: pulumi.String("StandardSSD_LRS")},
			},
		},
		NetworkProfile: &compute.NetworkProfileArgs{NetworkInterfaces: compute.NetworkInterfaceReferenceArray{
			compute.NetworkInterfaceReferenceArgs{Id: nic.ID().ToStringOutput(), Primary: pulumi.Bool(true), DeleteOption: pulumi.String("Delete")},
		}},
		Priority: pulumi.String("Regular"),
		Tags:     tags,
	}
	if spec.Machine.Spot {
		vmArgs.Priority = pulumi.String("Spot")
		// An evicted machine is gone with its disk, and the job fails as preempted.
		vmArgs.EvictionPolicy = pulumi.String("Delete")
		// -1: pay up to the on-demand price, never evicted for price.
		vmArgs.BillingProfile = &compute.BillingProfileArgs{MaxPrice: pulumi.Float64(-1)}
	}
	vm, err := compute.NewVirtualMachine(ctx, "machine", vmArgs, opts...)
	if err != nil {
		return Exports{}, fmt.Errorf("register virtual machine: %w", err)
	}
	// A machine that powers itself off stays allocated (and billed) on Azure: the schedule
	// stops and deallocates it, should the service and its reaper both be gone.
	shutdownAt, shutdownOn := azureShutdown(spec, clock())
	if _, err := devtestlab.NewGlobalSchedule(ctx, "auto-shutdown", &devtestlab.GlobalScheduleArgs{
		ResourceGroupName:    group,
		Name:                 pulumi.String("shutdown-computevm-" + base),
		Location:             pulumi.String(c.Location),
		Status:               pulumi.String(map[bool]string{true: "Enabled", false: "Disabled"}[shutdownOn]),
		TaskType:             pulumi.String("ComputeVmShutdownTask"),
		DailyRecurrence:      &devtestlab.DayDetailsArgs{Time: pulumi.String(shutdownAt)},
		TimeZoneId:           pulumi.String("UTC"),
		TargetResourceId:     vm.ID().ToStringOutput(),
		NotificationSettings: &devtestlab.NotificationSettingsArgs{Status: pulumi.String("Disabled")},
		Tags:                 tags,
	}, opts...); err != nil {
		return Exports{}, fmt.Errorf("register auto-shutdown schedule: %w", err)
	}

	hostKey, err := HostPublicKey(spec.HostPrivateKey)
	if err != nil {
		return Exports{}, err
	}
	gpu := size
	if g, ok := azureVMSizeGPUs[size]; ok {
		gpu = g.String()
	}
	return Exports{
		Host:         ip.IpAddress.Elem(),
		Port:         pulumi.Int(22).ToIntOutput(),
		User:         pulumi.String(user).ToStringOutput(),
		HostKey:      pulumi.String(hostKey).ToStringOutput(),
		InstanceID:   vm.ID().ToStringOutput(),
		WorkDir:      pulumi.String(wd).ToStringOutput(),
		GPU:          pulumi.String(gpu).ToStringOutput(),
		HourlyPrice:  pulumi.Float64(priceOr(c.HourlyPrice, azureHourlyPrices, size)).ToFloat64Output(),
		LeaseFile:    pulumi.String(lease).ToStringOutput(),
		HostKeyTrust: pulumi.String(TrustInjected).ToStringOutput(),
	}, nil
}

// InspectMachine reads an Azure virtual machine's state, as far as its properties tell:
// the power state of instanceView when present (PowerState/running and /starting count as
// running), else provisioningState (Failed and Deleting count as not running). Priority
// Spot marks a spot machine.
func (azureDriver) InspectMachine(r Resource) MachineState {
	s := MachineState{Running: true}
	if v, ok := r.Outputs["provisioningState"].(string); ok && v != "" {
		s.Status = v
		s.Running = v != "Failed" && v != "Deleting"
	}
	if view, ok := r.Outputs["instanceView"].(map[string]any); ok {
		statuses, _ := view["statuses"].([]any)
		for _, st := range statuses {
			m, _ := st.(map[string]any)
			code, _ := m["code"].(string)
			if power, ok := strings.CutPrefix(code, "PowerState/"); ok {
				s.Status = code
				s.Running = power == "running" || power == "starting"
			}
		}
	}
	if v, ok := r.Outputs["priority"].(string); ok {
		s.Interruptible = v == "Spot"
	}
	return s
}
