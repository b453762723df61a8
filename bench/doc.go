// Package bench holds the service's benchmarks (`make bench`): the control plane's
// overhead against running the same command straight over ssh, and many concurrent short
// jobs. They run the real binary, Pulumi engine and sshd; the training command is a fake
// runtime (testdata/fake-runtime) that speaks the progress protocol for a fixed time, so
// that the figures measure the service and not PyTorch.
package bench
