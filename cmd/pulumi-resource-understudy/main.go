// Command pulumi-resource-understudy is the plugin binary of the in-repo Pulumi provider.
// The Pulumi engine starts it; it is installed into PULUMI_HOME by the stacks package.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/understudy-ai/training-service/provider"
)

func main() {
	if err := provider.Run(context.Background()); err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-resource-understudy: %v\n", err)
		os.Exit(1)
	}
}
