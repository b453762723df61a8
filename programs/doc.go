// Package programs holds one Pulumi program per machine provider behind a common contract.
//
// Every program takes the same Spec (one training job's machine) and exports the same
// outputs: host, port, user, hostKey, instanceId, workDir, gpu and hourlyPrice (0 when
// unknown). The contract is enforced by types: a provider implements the small Driver
// interface, whose Deploy returns Exports, and the portable Program wraps it, checks the
// spec, and exports every output under the same name (gocloud.dev's driver/portable split).
//
// For returns the program of a provider by name; Names lists them. A provider's driver
// registers itself with Register from its own file or package, so cloud programs drop in
// without touching the callers. "local" (a machine on this host reached over real SSH),
// "runpod" and "lambda" use the in-repo provider's resources; "aws", "gcp" and "azure" use
// the clouds' official Pulumi SDKs, whose resource plugins must be installed at the
// versions Program.Plugin names. Drivers may implement PluginDriver and InspectDriver.
//
// Cloud programs render the machine's boot data (host key, dead-man's switch) with
// package provider/boot, name cloud resources with CloudName, and admit SSH only from
// Spec.SSHIngressCIDRs.
//
// Programs are plain functions of a *pulumi.Context: the stacks package runs them inline
// through the Automation API, and package programtest runs each of them under
// pulumi.WithMocks in one conformance suite that every driver must pass.
//
// Programs register resources of the in-repo provider with the version in the leaf package
// provider/version rather than importing package provider, so that the service does not
// link the provider SDK.
package programs
