package lifecycle

import (
	"context"
	"strconv"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/stacks"
)

// ProgramConfig configures the programs of every provider.
type ProgramConfig struct {
	Local  programs.LocalConfig
	RunPod programs.RunPodConfig
	Lambda programs.LambdaConfig
	AWS    programs.AWSConfig
	GCP    programs.GCPConfig
	Azure  programs.AzureConfig
	// SSHIngressCIDRs are the address ranges the service connects from: the clouds'
	// firewalls admit SSH from these only.
	SSHIngressCIDRs []string
	// NotConfigured maps a provider that cannot be used to what it lacks ("RUNPOD_API_KEY
	// (or RUNPOD_API_KEY_FILE) is not set").
	NotConfigured map[string]string
}

// stackProvisioner is the production Provisioner: one Pulumi stack per job.
type stackProvisioner struct {
	mgr *stacks.Manager
	cfg ProgramConfig
}

// NewStackProvisioner returns a Provisioner over the stacks manager.
func NewStackProvisioner(mgr *stacks.Manager, cfg ProgramConfig) Provisioner {
	return &stackProvisioner{mgr: mgr, cfg: cfg}
}

func (p *stackProvisioner) spec(req MachineRequest) programs.Spec {
	return programs.Spec{
		TrainID:         req.TrainID,
		EndpointID:      req.EndpointID,
		Version:         strconv.Itoa(req.Version),
		Provider:        req.Provider,
		AuthorizedKey:   req.AuthorizedKey,
		HostPrivateKey:  req.HostPrivateKey,
		Machine:         programs.MachineOptions(req.Options),
		LeaseSeconds:    req.LeaseSeconds,
		Deadline:        req.Deadline,
		Local:           p.cfg.Local,
		RunPod:          p.cfg.RunPod,
		Lambda:          p.cfg.Lambda,
		AWS:             p.cfg.AWS,
		GCP:             p.cfg.GCP,
		Azure:           p.cfg.Azure,
		SSHIngressCIDRs: p.cfg.SSHIngressCIDRs,
	}
}

func (p *stackProvisioner) Check(req MachineRequest) error {
	prog, err := programs.For(req.Provider)
	if err != nil {
		return err
	}
	if missing, ok := p.cfg.NotConfigured[req.Provider]; ok {
		return &job.Error{Code: job.CodeInvalidArgument, Reason: job.ReasonProviderNotConfigured,
			Message: "provider " + req.Provider + " is not configured on this service: " + missing}
	}
	return prog.ValidateOptions(p.spec(req))
}

func (p *stackProvisioner) Provision(ctx context.Context, req MachineRequest, log func(string)) (job.Machine, error) {
	out, err := p.mgr.Up(ctx, p.spec(req), log)
	if err != nil {
		return job.Machine{}, err
	}
	return machine(out), nil
}

func machine(o programs.Outputs) job.Machine {
	return job.Machine{InstanceID: o.InstanceID, Host: o.Host, Port: o.Port, User: o.User, HostKey: o.HostKey,
		WorkDir: o.WorkDir, GPU: o.GPU, HourlyPriceUSD: o.HourlyPrice, HostKeyTrust: o.HostKeyTrust, LeaseFile: o.LeaseFile}
}

func (p *stackProvisioner) Machine(ctx context.Context, trainID string) (job.Machine, error) {
	out, err := p.mgr.Outputs(ctx, trainID)
	if err != nil {
		return job.Machine{}, err
	}
	if out.Host == "" {
		return job.Machine{}, job.Errorf(job.CodeNotFound, "stack %s has no machine", trainID)
	}
	return machine(out), nil
}

func (p *stackProvisioner) Inspect(ctx context.Context, trainID, provider string) (MachineHealth, error) {
	prog, err := programs.For(provider)
	if err != nil {
		return MachineHealth{}, err
	}
	res, err := p.mgr.Refresh(ctx, trainID)
	if err != nil {
		return MachineHealth{}, err
	}
	s := prog.Inspect(res)
	return MachineHealth{Exists: s.Exists, Running: s.Running, Preempted: s.Preempted(), Status: s.Status}, nil
}

func (p *stackProvisioner) ResourceIDs(ctx context.Context) (map[string]string, error) {
	return p.mgr.ResourceIDs(ctx)
}

func (p *stackProvisioner) Teardown(ctx context.Context, trainID string, log func(string)) error {
	return p.mgr.Destroy(ctx, trainID, log)
}

func (p *stackProvisioner) Stacks(ctx context.Context) ([]string, error) {
	list, err := p.mgr.List(ctx)
	if err != nil {
		return nil, err
	}
	// Name jobs by their train_id tag: a long train_id's stack name is shortened.
	names := make([]string, len(list))
	for i, s := range list {
		names[i] = s.Name
		if id := s.Tags[programs.TagTrainID]; id != "" {
			names[i] = id
		}
	}
	return names, nil
}
