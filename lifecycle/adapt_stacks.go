package lifecycle

import (
	"context"
	"strconv"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/stacks"
)

// stackProvisioner is the production Provisioner: one Pulumi stack per job.
type stackProvisioner struct {
	mgr   *stacks.Manager
	local programs.LocalConfig
}

// NewStackProvisioner returns a Provisioner over the stacks manager; local configures the
// local provider's workers.
func NewStackProvisioner(mgr *stacks.Manager, local programs.LocalConfig) Provisioner {
	return &stackProvisioner{mgr: mgr, local: local}
}

func (p *stackProvisioner) Provision(ctx context.Context, req MachineRequest, log func(string)) (job.Machine, error) {
	out, err := p.mgr.Up(ctx, programs.Spec{
		TrainID:        req.TrainID,
		EndpointID:     req.EndpointID,
		Version:        strconv.Itoa(req.Version),
		Provider:       req.Provider,
		AuthorizedKey:  req.AuthorizedKey,
		HostPrivateKey: req.HostPrivateKey,
		Local:          p.local,
	}, log)
	if err != nil {
		return job.Machine{}, err
	}
	return machine(out), nil
}

func machine(o programs.Outputs) job.Machine {
	return job.Machine{InstanceID: o.InstanceID, Host: o.Host, Port: o.Port, User: o.User, HostKey: o.HostKey,
		WorkDir: o.WorkDir, GPU: o.GPU, HourlyPriceUSD: o.HourlyPrice}
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
