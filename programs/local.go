package programs

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/understudy-ai/training-service/provider/version"
)

// LocalWorkerType is the token of the in-repo provider's local worker resource.
const LocalWorkerType = "understudy:index:LocalWorker"

func init() { Register("local", localDriver{}) }

// localDriver provisions a machine on this host: one understudy:index:LocalWorker, an sshd
// for this job only on a loopback port.
type localDriver struct{}

// localWorker is the client side of understudy:index:LocalWorker. There is no generated
// SDK for the in-repo provider; the output fields mirror the provider's LocalWorkerState.
type localWorker struct {
	pulumi.CustomResourceState

	Host          pulumi.StringOutput `pulumi:"host"`
	Port          pulumi.IntOutput    `pulumi:"port"`
	User          pulumi.StringOutput `pulumi:"user"`
	WorkDir       pulumi.StringOutput `pulumi:"workDir"`
	HostPublicKey pulumi.StringOutput `pulumi:"hostPublicKey"`
	InstanceID    pulumi.StringOutput `pulumi:"instanceId"`
	GPU           pulumi.StringOutput `pulumi:"gpu"`
}

func (localDriver) MachineType() string { return LocalWorkerType }

func (localDriver) Validate(spec Spec) error {
	if spec.Machine != (MachineOptions{}) {
		return errors.New("gpu_type and spot do not apply to the local provider, which runs on the service's own host")
	}
	if !filepath.IsAbs(spec.Local.BaseDir) {
		return fmt.Errorf("Local.BaseDir %q: want an absolute path", spec.Local.BaseDir)
	}
	if spec.Local.SSHDPath != "" && !filepath.IsAbs(spec.Local.SSHDPath) {
		return errors.New("Local.SSHDPath: want an absolute path")
	}
	return nil
}

func (localDriver) Deploy(ctx *pulumi.Context, spec Spec) (Exports, error) {
	args := pulumi.Map{
		"trainId":        pulumi.String(spec.TrainID),
		"hostPrivateKey": pulumi.ToSecret(pulumi.String(spec.HostPrivateKey)),
		"authorizedKey":  pulumi.String(spec.AuthorizedKey),
		"baseDir":        pulumi.String(filepath.Clean(spec.Local.BaseDir)),
		"tags":           pulumi.ToStringMap(Tags(spec)),
	}
	if spec.Local.SSHDPath != "" {
		args["sshdPath"] = pulumi.String(spec.Local.SSHDPath)
	}
	if spec.Local.User != "" {
		args["runAs"] = pulumi.String(spec.Local.User)
	}
	var w localWorker
	if err := ctx.RegisterResource(LocalWorkerType, "worker", args, &w, pulumi.Version(version.Version)); err != nil {
		return Exports{}, fmt.Errorf("register local worker: %w", err)
	}
	return Exports{
		Host:        w.Host,
		Port:        w.Port,
		User:        w.User,
		HostKey:     w.HostPublicKey,
		InstanceID:  w.InstanceID,
		WorkDir:     w.WorkDir,
		GPU:         w.GPU,
		HourlyPrice: pulumi.Float64(0).ToFloat64Output(),
		// The local machine is this host: it has no dead-man's switch to renew.
		LeaseFile:    pulumi.String("").ToStringOutput(),
		HostKeyTrust: pulumi.String(TrustInjected).ToStringOutput(),
	}, nil
}
