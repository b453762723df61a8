// Package stacks runs the Pulumi Automation API for the service: one stack per training
// job, named after the job's train_id, in project "understudy-training", with the job's
// program from package programs run inline.
//
// A Manager owns the backend (a file:// directory by default), PULUMI_HOME, the pinned
// Pulumi CLI and the in-repo provider plugin, which Open installs into PULUMI_HOME so that
// the engine never tries to download it. Up, Destroy, Outputs and List are safe to call
// from many goroutines: every operation gets a fresh workspace directory of its own, and
// operations on the same stack are serialised inside the process.
//
// Destroy is the teardown that must always work: a missing stack is success, a lock left
// by an update whose process is gone is cleared (pulumi cancel), pending operations left
// by an interrupted update are dropped (stack export / import), and the stack is removed
// once its resources are destroyed.
//
// Stacks carry the tags train_id, endpoint_id, version and provider (the file backend
// supports stack tags), which List reports so that a reaper can match stacks to jobs.
//
// Errors carry job codes: InvalidArgument for a bad spec or name, NotFound for a missing
// stack, FailedPrecondition for a stack without outputs or a broken setup, Unavailable for
// engine failures worth retrying (including a stack locked by a running update), Canceled
// when the caller's context ended, and Internal for a program that broke its contract.
package stacks
