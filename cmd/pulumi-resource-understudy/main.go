// Command pulumi-resource-understudy is the plugin binary of the in-repo Pulumi provider
// "understudy". The Pulumi engine starts it and talks to it over gRPC; the stacks package
// installs it into PULUMI_HOME. The engine ends it with SIGINT, which the provider SDK
// turns into a graceful stop.
package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/understudy-ai/training-service/provider"
)

func main() {
	if err := run(context.Background(), os.Stderr); err != nil {
		os.Exit(1)
	}
}

func run(ctx context.Context, stderr io.Writer) error {
	if err := provider.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "pulumi-resource-understudy: %v\n", err)
		return err
	}
	return nil
}
