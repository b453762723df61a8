package lifecycle

import (
	"context"
	"strings"

	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/provider/lambda"
	"github.com/understudy-ai/training-service/provider/runpod"
)

// NewRunPodInventory returns the Inventory of a RunPod account: its pods named by the
// service.
func NewRunPodInventory(c *runpod.Client) Inventory { return runPodInventory{c} }

type runPodInventory struct{ c *runpod.Client }

func (i runPodInventory) List(ctx context.Context) ([]CloudMachine, error) {
	pods, err := i.c.ListPods(ctx)
	if err != nil {
		return nil, err
	}
	var out []CloudMachine
	for _, p := range pods {
		if !strings.HasPrefix(p.Name, programs.MachinePrefix) || p.Status == runpod.StatusTerminated {
			continue
		}
		out = append(out, CloudMachine{Provider: "runpod", Kind: "pod", ID: p.ID, Name: p.Name, Status: p.Status, HourlyPriceUSD: p.Cost})
	}
	return out, nil
}

func (i runPodInventory) Remove(ctx context.Context, m CloudMachine) error {
	if err := i.c.DeletePod(ctx, m.ID); err != nil {
		return err
	}
	return i.c.WaitGone(ctx, m.ID)
}

// NewLambdaInventory returns the Inventory of a Lambda Cloud account: its instances and
// registered SSH keys named by the service.
func NewLambdaInventory(c *lambda.Client) Inventory { return lambdaInventory{c} }

type lambdaInventory struct{ c *lambda.Client }

func (i lambdaInventory) List(ctx context.Context) ([]CloudMachine, error) {
	insts, err := i.c.Instances(ctx)
	if err != nil {
		return nil, err
	}
	var out []CloudMachine
	for _, in := range insts {
		if !strings.HasPrefix(in.NameOr(), programs.MachinePrefix) || in.Status == lambda.StatusTerminated {
			continue
		}
		out = append(out, CloudMachine{Provider: "lambda", Kind: "instance", ID: in.ID, Name: in.NameOr(), Status: in.Status,
			HourlyPriceUSD: in.InstanceType.HourlyPrice()})
	}
	keys, err := i.c.SSHKeys(ctx)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if strings.HasPrefix(k.Name, programs.MachinePrefix) {
			out = append(out, CloudMachine{Provider: "lambda", Kind: KindSSHKey, ID: k.ID, Name: k.Name})
		}
	}
	return out, nil
}

func (i lambdaInventory) Remove(ctx context.Context, m CloudMachine) error {
	if m.Kind == KindSSHKey {
		return i.c.DeleteSSHKey(ctx, m.ID)
	}
	if err := i.c.Terminate(ctx, m.ID); err != nil {
		return err
	}
	return i.c.WaitTerminated(ctx, m.ID)
}
