//go:build tools

// Package tools pins the Pulumi CLI that the Makefile builds into bin/pulumi.
package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
