package programs

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ec2"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/understudy-ai/training-service/provider/boot"
)

// Tokens of the AWS resources the "aws" program registers.
const (
	AWSInstanceType      = "aws:ec2/instance:Instance"
	AWSKeyPairType       = "aws:ec2/keyPair:KeyPair"
	AWSSecurityGroupType = "aws:ec2/securityGroup:SecurityGroup"
)

// AWS defaults.
const (
	AWSDefaultInstanceType = "g5.xlarge"
	AWSDefaultUser         = "ubuntu"
	AWSDefaultWorkDir      = "/home/ubuntu/understudy"
	AWSDefaultDiskGB       = 100
	// AWSAMINamePattern finds the default AMI, the newest of Amazon's Deep Learning Base
	// AMIs with the NVIDIA driver and CUDA on Ubuntu 22.04 (x86_64).
	AWSAMINamePattern = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
)

// AWSPluginVersion is the version of the "aws" resource plugin that the AWS SDK in go.mod
// registers its resources with; stacks installs exactly this one.
const AWSPluginVersion = "6.83.4"

func init() { Register("aws", awsDriver{}) }

// AWSConfig configures the "aws" program. Empty fields take the defaults. Credentials come
// from the AWS provider's usual environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, …), never
// from here.
type AWSConfig struct {
	Region       string  // AWS_REGION; required
	InstanceType string  // default instance type when the job names none (a job's gpu_type is an EC2 instance type, such as g5.xlarge); default AWSDefaultInstanceType
	AMI          string  // AMI id override; empty: the newest AMI named AWSAMINamePattern owned by amazon
	SubnetID     string  // empty: a subnet of the default VPC chosen by EC2
	VPCID        string  // the VPC of SubnetID, for the security group; empty: the default VPC
	DiskGB       int     // gp3 root volume; default AWSDefaultDiskGB
	User         string  // the AMI's login user; default AWSDefaultUser
	WorkDir      string  // base directory for jobs on the machine; default AWSDefaultWorkDir
	HourlyPrice  float64 // USD/h override; 0: the on-demand list price of the instance type, 0 if unknown
}

var (
	awsInstanceTypePattern = regexp.MustCompile(`^[a-z][a-z0-9-]*\.[a-z0-9]+$`)
	awsAMIPattern          = regexp.MustCompile(`^ami-[0-9a-f]{8,17}$`)
	awsRegionPattern       = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
	awsSubnetPattern       = regexp.MustCompile(`^subnet-[0-9a-f]{8,17}$`)
	awsVPCPattern          = regexp.MustCompile(`^vpc-[0-9a-f]{8,17}$`)
	unixUserPattern        = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
)

// awsDriver provisions per job an EC2 key pair holding the job's key, a security group
// admitting SSH from the service only, and a GPU instance booted with cloud-init that
// installs the service's host key and arms the dead-man's switch. The instance terminates
// when it powers itself off, so the switch ends its billing.
type awsDriver struct{}

func (awsDriver) MachineType() string { return AWSInstanceType }

func (awsDriver) Plugin() (string, string) { return "aws", AWSPluginVersion }

func (awsDriver) Validate(spec Spec) error {
	c := spec.AWS
	if c.Region == "" {
		return errors.New("AWS.Region (AWS_REGION) is required")
	}
	if !awsRegionPattern.MatchString(c.Region) {
		return fmt.Errorf("AWS.Region %q: want a region such as us-east-1", c.Region)
	}
	if err := checkIngress(spec.SSHIngressCIDRs); err != nil {
		return err
	}
	if err := refuseFallback(spec); err != nil {
		return err
	}
	if t := spec.Machine.GPUType; t != "" && !awsInstanceTypePattern.MatchString(t) {
		return fmt.Errorf("gpu_type %q: want an EC2 instance type such as g5.xlarge", t)
	}
	if c.InstanceType != "" && !awsInstanceTypePattern.MatchString(c.InstanceType) {
		return fmt.Errorf("AWS.InstanceType %q: want an EC2 instance type such as g5.xlarge", c.InstanceType)
	}
	if c.AMI != "" && !awsAMIPattern.MatchString(c.AMI) {
		return fmt.Errorf("AWS.AMI %q: want an AMI id such as ami-0123456789abcdef0", c.AMI)
	}
	if c.SubnetID != "" && !awsSubnetPattern.MatchString(c.SubnetID) {
		return fmt.Errorf("AWS.SubnetID %q: want a subnet id such as subnet-0123456789abcdef0", c.SubnetID)
	}
	if c.VPCID != "" && !awsVPCPattern.MatchString(c.VPCID) {
		return fmt.Errorf("AWS.VPCID %q: want a VPC id such as vpc-0123456789abcdef0", c.VPCID)
	}
	if c.SubnetID != "" && c.VPCID == "" {
		return errors.New("AWS.VPCID: required with AWS.SubnetID, for the job's security group")
	}
	if c.DiskGB < 0 || c.DiskGB > 16384 {
		return fmt.Errorf("AWS.DiskGB %d: want 1-16384 (0 for the default)", c.DiskGB)
	}
	if c.User != "" && !unixUserPattern.MatchString(c.User) {
		return fmt.Errorf("AWS.User %q: not a user name", c.User)
	}
	if c.WorkDir != "" {
		if err := checkWorkDir("AWS.WorkDir", c.WorkDir); err != nil {
			return err
		}
	}
	if c.HourlyPrice < 0 {
		return errors.New("AWS.HourlyPrice: must not be negative")
	}
	return nil
}

func (awsDriver) Deploy(ctx *pulumi.Context, spec Spec) (Exports, error) {
	c := spec.AWS
	typ := defaultString(spec.Machine.GPUType, c.InstanceType, AWSDefaultInstanceType)
	user := defaultString(c.User, AWSDefaultUser)
	wd := machineWorkDir(defaultString(c.WorkDir, AWSDefaultWorkDir), spec.TrainID)
	name := CloudName(spec.TrainID, 255)
	tags := Tags(spec)
	named := func(n string) pulumi.StringMap {
		m := pulumi.ToStringMap(tags)
		m["Name"] = pulumi.String(n)
		return m
	}

	prov, err := aws.NewProvider(ctx, "aws", &aws.ProviderArgs{Region: pulumi.String(c.Region)})
	if err != nil {
		return Exports{}, fmt.Errorf("register aws provider: %w", err)
	}
	opts := []pulumi.ResourceOption{pulumi.Provider(prov)}

	ami := pulumi.String(c.AMI).ToStringOutput()
	if c.AMI == "" {
		found, err := ec2.LookupAmi(ctx, &ec2.LookupAmiArgs{
			MostRecent: pulumi.BoolRef(true),
			Owners:     []string{"amazon"},
			Filters: []ec2.GetAmiFilter{
				{Name: "name", Values: []string{AWSAMINamePattern}},
				{Name: "architecture", Values: []string{"x86_64"}},
				{Name: "state", Values: []string{"available"}},
			},
		}, pulumi.Provider(prov))
		if err != nil {
			return Exports{}, fmt.Errorf("look up deep learning ami: %w", err)
		}
		ami = pulumi.String(found.Id).ToStringOutput()
	}

	key, err := ec2.NewKeyPair(ctx, "ssh-key", &ec2.KeyPairArgs{
		KeyName:   pulumi.String(name),
		PublicKey: pulumi.String(strings.TrimSpace(spec.AuthorizedKey)),
		Tags:      named(name),
	}, opts...)
	if err != nil {
		return Exports{}, fmt.Errorf("register key pair: %w", err)
	}

	ssh := ec2.SecurityGroupIngressArgs{
		Description: pulumi.String("SSH from the understudy service"),
		Protocol:    pulumi.String("tcp"),
		FromPort:    pulumi.Int(22),
		ToPort:      pulumi.Int(22),
	}
	var v6 []string
	for _, c := range spec.SSHIngressCIDRs {
		if strings.Contains(c, ":") {
			v6 = append(v6, c)
		}
	}
	if v4 := ipv4Ranges(spec.SSHIngressCIDRs); len(v4) > 0 {
		ssh.CidrBlocks = pulumi.ToStringArray(v4)
	}
	if len(v6) > 0 {
		ssh.Ipv6CidrBlocks = pulumi.ToStringArray(v6)
	}
	sgArgs := &ec2.SecurityGroupArgs{
		Name:        pulumi.String(name),
		Description: pulumi.String("understudy training job " + spec.TrainID + ": SSH from the service only"),
		Ingress:     ec2.SecurityGroupIngressArray{ssh},
		// The bridged provider removes AWS's default allow-all egress rule; the machine needs
		// it for packages, the dataset and the weights.
		Egress: ec2.SecurityGroupEgressArray{ec2.SecurityGroupEgressArgs{
			Description:    pulumi.String("all outbound"),
			Protocol:       pulumi.String("-1"),
			FromPort:       pulumi.Int(0),
			ToPort:         pulumi.Int(0),
			CidrBlocks:     pulumi.ToStringArray([]string{"0.0.0.0/0"}),
			Ipv6CidrBlocks: pulumi.ToStringArray([]string{"::/0"}),
		}},
		Tags: named(name),
	}
	if c.VPCID != "" {
		sgArgs.VpcId = pulumi.String(c.VPCID)
	}
	sg, err := ec2.NewSecurityGroup(ctx, "ssh", sgArgs, opts...)
	if err != nil {
		return Exports{}, fmt.Errorf("register security group: %w", err)
	}

	lease := ""
	if spec.LeaseSeconds > 0 {
		lease = leaseFile(wd)
	}
	userData, err := boot.CloudInit(boot.Machine{
		HostPrivateKey: spec.HostPrivateKey,
		AuthorizedKeys: []string{spec.AuthorizedKey},
		Lease:          boot.Lease{File: leaseFile(wd), Seconds: spec.LeaseSeconds, Deadline: int64(deadlineUnix(spec))},
	})
	if err != nil {
		return Exports{}, fmt.Errorf("render user data: %w", err)
	}

	args := &ec2.InstanceArgs{
		Ami:                      ami,
		InstanceType:             pulumi.String(typ),
		KeyName:                  key.KeyName,
		VpcSecurityGroupIds:      pulumi.StringArray{sg.ID().ToStringOutput()},
		AssociatePublicIpAddress: pulumi.Bool(true),
		// The dead-man's switch powers the machine off: that must end it, and its billing.
		InstanceInitiatedShutdownBehavior: pulumi.String("terminate"),
		UserData:                          pulumi.ToSecret(pulumi.String(userData)).(pulumi.StringOutput),
		RootBlockDevice: &ec2.InstanceRootBlockDeviceArgs{
			VolumeSize:          pulumi.Int(defaultInt(c.DiskGB, AWSDefaultDiskGB)),
			VolumeType:          pulumi.String("gp3"),
			DeleteOnTermination: pulumi.Bool(true),
		},
		Tags:       named(name),
		VolumeTags: pulumi.ToStringMap(tags),
	}
	if c.SubnetID != "" {
		args.SubnetId = pulumi.String(c.SubnetID)
	}
	if spec.Machine.Spot {
		// One-time: an interrupted machine is gone, and the job fails as preempted rather
		// than a new machine appearing behind the service's back.
		args.InstanceMarketOptions = &ec2.InstanceInstanceMarketOptionsArgs{
			MarketType: pulumi.String("spot"),
			SpotOptions: &ec2.InstanceInstanceMarketOptionsSpotOptionsArgs{
				SpotInstanceType:             pulumi.String("one-time"),
				InstanceInterruptionBehavior: pulumi.String("terminate"),
			},
		}
	}
	instOpts := opts
	if c.AMI == "" {
		// The look-up answers the newest AMI: a later up of the same stack (a retry) must not
		// replace a running machine because Amazon has published a newer one meanwhile.
		instOpts = append(append([]pulumi.ResourceOption(nil), opts...), pulumi.IgnoreChanges([]string{"ami"}))
	}
	inst, err := ec2.NewInstance(ctx, "machine", args, instOpts...)
	if err != nil {
		return Exports{}, fmt.Errorf("register instance: %w", err)
	}

	hostKey, err := HostPublicKey(spec.HostPrivateKey)
	if err != nil {
		return Exports{}, err
	}
	gpu := typ
	if g, ok := awsInstanceGPUs[typ]; ok {
		gpu = g.String()
	}
	return Exports{
		Host:         inst.PublicIp,
		Port:         pulumi.Int(22).ToIntOutput(),
		User:         pulumi.String(user).ToStringOutput(),
		HostKey:      pulumi.String(hostKey).ToStringOutput(),
		InstanceID:   inst.ID().ToStringOutput(),
		WorkDir:      pulumi.String(wd).ToStringOutput(),
		GPU:          pulumi.String(gpu).ToStringOutput(),
		HourlyPrice:  pulumi.Float64(priceOr(c.HourlyPrice, awsHourlyPrices, typ)).ToFloat64Output(),
		LeaseFile:    pulumi.String(lease).ToStringOutput(),
		HostKeyTrust: pulumi.String(TrustInjected).ToStringOutput(),
	}, nil
}

// InspectMachine reads an EC2 instance's state: pending and running count as running,
// stopping, stopped, shutting-down and terminated as not; instanceLifecycle "spot" marks
// a spot instance.
func (awsDriver) InspectMachine(r Resource) MachineState {
	s := MachineState{Running: true}
	if v, ok := r.Outputs["instanceState"].(string); ok {
		s.Status = v
		s.Running = v == "pending" || v == "running"
	}
	if v, ok := r.Outputs["instanceLifecycle"].(string); ok {
		s.Interruptible = v == "spot"
	}
	return s
}
