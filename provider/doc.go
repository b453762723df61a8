// Package provider is the in-repo Pulumi resource provider "understudy", built with
// pulumi-go-provider's infer package and served by cmd/pulumi-resource-understudy.
//
// It holds the resources that have no official Pulumi provider. The first is LocalWorker
// (token understudy:index:LocalWorker): a machine on this host reached over real SSH. Create
// starts an OpenSSH sshd for one job only, on a free loopback port, with the job's host key
// and authorized key; Delete stops exactly that sshd and every process of the job's sessions,
// then removes the worker's directory.
//
// Every process of a worker's SSH sessions carries UNDERSTUDY_WORKER=<worker dir> in its
// environment (sshd_config SetEnv), which is how Delete finds detached training runs.
//
// The package imports nothing else of this module, so the provider binary stays small and
// the rest of the service never links the provider SDK. Programs refer to the provider's
// version through the leaf package provider/version.
package provider
