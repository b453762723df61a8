package provider

import (
	"context"

	p "github.com/pulumi/pulumi-go-provider"
	"github.com/pulumi/pulumi-go-provider/infer"

	"github.com/understudy-ai/training-service/provider/version"
)

// Name is the provider's package name: resource tokens begin with "understudy:" and the
// plugin binary is pulumi-resource-understudy.
const Name = "understudy"

// Version is the provider's plugin version (see package version).
const Version = version.Version

// New returns the provider with all of its resources.
func New() (p.Provider, error) {
	return infer.NewProviderBuilder().
		WithDisplayName("Understudy").
		WithDescription("Resources of the Understudy Training Service that have no official Pulumi provider.").
		WithNamespace("understudy-ai").
		WithResources(
			infer.Resource(&LocalWorker{}),
			infer.Resource(&RunPodPod{}),
			infer.Resource(&LambdaInstance{}),
			infer.Resource(&LambdaSSHKey{}),
		).
		Build()
}

// Run serves the provider over gRPC to the Pulumi engine until ctx ends or the engine
// hangs up. It is what the plugin binary's main calls.
func Run(ctx context.Context) error {
	prov, err := New()
	if err != nil {
		return err
	}
	return prov.Run(ctx, Name, Version)
}
