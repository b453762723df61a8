// Package provider is the in-repo Pulumi resource provider "understudy", built with
// pulumi-go-provider's infer package and served by cmd/pulumi-resource-understudy.
//
// It holds the resources that have no official Pulumi provider:
//
//   - LocalWorker (understudy:index:LocalWorker): a machine on this host reached over real
//     SSH. Create starts an OpenSSH sshd for one job only, on a free loopback port, with the
//     job's host key and authorized key; Delete stops exactly that sshd and every process of
//     the job's sessions (they carry UNDERSTUDY_WORKER=<worker dir> in their environment,
//     sshd_config SetEnv), then removes the worker's directory.
//   - RunPodPod (understudy:runpod:Pod): a RunPod GPU pod over REST v2, or GraphQL for spot.
//   - LambdaInstance and LambdaSSHKey (understudy:lambda:Instance, understudy:lambda:SSHKey):
//     a Lambda Cloud instance launched with the job's key registered under the job's name.
//
// Cloud machines install the service's host key before sshd starts and arm a dead-man's
// switch (package boot). Their API keys come from the provider's environment (RUNPOD_API_KEY,
// LAMBDA_API_KEY or their _FILE variants), never from inputs, so neither the state nor an
// operator's `pulumi destroy` needs them anywhere else. Errors end with a marker naming their
// reason (package cloudapi), which the service reads back from the engine's diagnostics.
// Every resource implements Read, so `pulumi refresh` notices a machine that was terminated
// (it is dropped) or stopped (running: false) outside the service.
//
// The package imports only its own subpackages, so the provider binary stays small and the
// rest of the service never links the provider SDK. Programs refer to the provider's version
// through the leaf package provider/version.
package provider
