package programs

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/understudy-ai/training-service/provider/version"
)

// Tokens of the in-repo provider's Lambda Cloud resources.
const (
	LambdaInstanceType = "understudy:lambda:Instance"
	LambdaSSHKeyType   = "understudy:lambda:SSHKey"
)

// Lambda defaults.
const (
	LambdaDefaultInstanceType = "gpu_1x_a10"
	LambdaDefaultUser         = "ubuntu"
	LambdaDefaultWorkDir      = "/home/ubuntu/understudy"
)

func init() { Register("lambda", lambdaDriver{}) }

// LambdaConfig configures the "lambda" program. Empty fields take the defaults.
type LambdaConfig struct {
	APIURL       string // Lambda's API; default https://cloud.lambdalabs.com/api/v1
	InstanceType string // default instance type when the job names none; default LambdaDefaultInstanceType
	Region       string // empty: the first region with capacity
	SSHUser      string // default ubuntu
	SSHPort      int    // default 22
	// WorkDir is the base directory for jobs on the instance; default LambdaDefaultWorkDir.
	WorkDir string
	// OperatorKeyName names an operator's key registered at Lambda, authorised beside the
	// job's own for debugging (LAMBDA_SSH_KEY_NAME). The service never logs in with it.
	OperatorKeyName string
}

var lambdaTypePattern = regexp.MustCompile(`^[a-z0-9_]{1,64}$`)

// lambdaDriver provisions per job an understudy:lambda:SSHKey (the job's key, registered
// under the job's name) and an understudy:lambda:Instance launched with it.
type lambdaDriver struct{}

type lambdaSSHKey struct {
	pulumi.CustomResourceState
	Name  pulumi.StringOutput `pulumi:"name"`
	KeyID pulumi.StringOutput `pulumi:"keyId"`
}

type lambdaInstance struct {
	pulumi.CustomResourceState

	InstanceID    pulumi.StringOutput  `pulumi:"instanceId"`
	Host          pulumi.StringOutput  `pulumi:"host"`
	Port          pulumi.IntOutput     `pulumi:"port"`
	User          pulumi.StringOutput  `pulumi:"user"`
	HostPublicKey pulumi.StringOutput  `pulumi:"hostPublicKey"`
	HostKeyTrust  pulumi.StringOutput  `pulumi:"hostKeyTrust"`
	HourlyPrice   pulumi.Float64Output `pulumi:"hourlyPrice"`
	GPU           pulumi.StringOutput  `pulumi:"gpu"`
}

func (lambdaDriver) MachineType() string { return LambdaInstanceType }

func (lambdaDriver) Validate(spec Spec) error {
	c := spec.Lambda
	if spec.Machine.Spot {
		return errors.New("spot: Lambda Cloud has no spot instances")
	}
	if t := spec.Machine.GPUType; t != "" && !lambdaTypePattern.MatchString(t) {
		return fmt.Errorf("gpu_type %q: want a Lambda instance type such as gpu_1x_a10", t)
	}
	if c.InstanceType != "" && !lambdaTypePattern.MatchString(c.InstanceType) {
		return fmt.Errorf("Lambda.InstanceType %q: want an instance type such as gpu_1x_a10", c.InstanceType)
	}
	if c.SSHPort < 0 || c.SSHPort > 65535 {
		return fmt.Errorf("Lambda.SSHPort %d: out of range", c.SSHPort)
	}
	if c.WorkDir != "" {
		if err := checkWorkDir("Lambda.WorkDir", c.WorkDir); err != nil {
			return err
		}
	}
	if len(c.OperatorKeyName) > 64 {
		return errors.New("Lambda.OperatorKeyName: at most 64 characters")
	}
	return nil
}

func (lambdaDriver) Deploy(ctx *pulumi.Context, spec Spec) (Exports, error) {
	c := spec.Lambda
	typ := spec.Machine.GPUType
	if typ == "" {
		typ = c.InstanceType
	}
	if typ == "" {
		typ = LambdaDefaultInstanceType
	}
	base := c.WorkDir
	if base == "" {
		base = LambdaDefaultWorkDir
	}
	wd := machineWorkDir(base, spec.TrainID)
	name := MachineName(spec.TrainID)
	tags := pulumi.ToStringMap(Tags(spec))
	keyArgs := pulumi.Map{"name": pulumi.String(name), "publicKey": pulumi.String(spec.AuthorizedKey), "tags": tags}
	if c.APIURL != "" {
		keyArgs["apiUrl"] = pulumi.String(c.APIURL)
	}
	var key lambdaSSHKey
	if err := ctx.RegisterResource(LambdaSSHKeyType, "ssh-key", keyArgs, &key, pulumi.Version(version.Version)); err != nil {
		return Exports{}, fmt.Errorf("register lambda ssh key: %w", err)
	}
	args := pulumi.Map{
		"name":           pulumi.String(name),
		"instanceType":   pulumi.String(typ),
		"sshKeyName":     key.Name,
		"authorizedKeys": pulumi.ToStringArray([]string{spec.AuthorizedKey}),
		"hostPrivateKey": pulumi.ToSecret(pulumi.String(spec.HostPrivateKey)),
		"workDir":        pulumi.String(wd),
		"leaseSeconds":   pulumi.Int(spec.LeaseSeconds),
		"deadline":       pulumi.Int(deadlineUnix(spec)),
		"tags":           tags,
	}
	if c.APIURL != "" {
		args["apiUrl"] = pulumi.String(c.APIURL)
	}
	if c.Region != "" {
		args["region"] = pulumi.String(c.Region)
	}
	if c.SSHUser != "" {
		args["sshUser"] = pulumi.String(c.SSHUser)
	}
	if c.SSHPort > 0 {
		args["sshPort"] = pulumi.Int(c.SSHPort)
	}
	if c.OperatorKeyName != "" {
		args["operatorKeyName"] = pulumi.String(c.OperatorKeyName)
	}
	var inst lambdaInstance
	if err := ctx.RegisterResource(LambdaInstanceType, "machine", args, &inst, pulumi.Version(version.Version),
		pulumi.DependsOn([]pulumi.Resource{&key})); err != nil {
		return Exports{}, fmt.Errorf("register lambda instance: %w", err)
	}
	lease := ""
	if spec.LeaseSeconds > 0 {
		lease = leaseFile(wd)
	}
	return Exports{
		Host:         inst.Host,
		Port:         inst.Port,
		User:         inst.User,
		HostKey:      inst.HostPublicKey,
		InstanceID:   inst.InstanceID,
		WorkDir:      pulumi.String(wd).ToStringOutput(),
		GPU:          inst.GPU,
		HourlyPrice:  inst.HourlyPrice,
		LeaseFile:    pulumi.String(lease).ToStringOutput(),
		HostKeyTrust: inst.HostKeyTrust,
	}, nil
}
