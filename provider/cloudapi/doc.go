// Package cloudapi is what the REST clients of the in-repo provider's clouds (RunPod,
// Lambda Cloud) share: an HTTP client that retries with backoff and jitter under a
// deadline, honours Retry-After, and never repeats a request that may already have taken
// effect; errors that carry a Reason (no capacity, bad key, quota, ...) so that callers
// branch without parsing messages; rate limiters that hold across processes; and secrets
// read from the environment or from a file named by <NAME>_FILE.
//
// A provider's errors reach the service through the Pulumi engine as text. Error.Error
// therefore ends with a marker such as "[understudy:no_capacity]", which ParseMarker finds
// again in the engine's diagnostics.
//
// The package imports only the standard library, so that the service can use the clients
// (for `stacks gc`) without linking the provider SDK.
package cloudapi
