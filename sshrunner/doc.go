// Package sshrunner drives a training job on a machine over SSH: it dials with a context
// and a pinned host key, uploads the runtime and the dataset, starts the run detached so
// that a dropped connection does not stop it, streams its progress from a saved byte offset,
// signals it, and downloads its output into a *blob.Bucket with a sha256 manifest that
// Verify checks again after the copy.
//
// # Host keys
//
// The host key is always pinned: Target.HostKey is the key the service generated for the
// machine, and a server presenting any other key is refused with an error of code
// FailedPrecondition that wraps ErrHostKeyMismatch. There is no trust-on-first-use and no
// way to turn checking off.
//
// # The work directory
//
// Start, Follow and Signal share a layout on the machine (docs/progress-protocol.md):
//
//	<work dir>/progress.jsonl  the run's stdout, appended to
//	<work dir>/stderr.log      the run's stderr, appended to
//	<work dir>/pid             the id of the run's process (and of its process group)
//	<work dir>/exit_code       the run's exit status, written atomically once it exits
//
// The run is started with setsid and nohup in its own session by a small supervising shell
// that writes exit_code, so it survives the SSH connection. Follow detects a run that
// vanished without an exit status (the machine rebooted, the process was killed) by
// looking for its process id under /proc, so the machine must run Linux.
//
// # Errors
//
// Errors carry a job.Code: Unavailable for network trouble worth a redial (Follow can be
// called again from the last offset it reported), FailedPrecondition for a host key
// mismatch, a lost process (reason "process_lost") or a checksum mismatch (reason
// "checksum_mismatch"), Unauthenticated for a refused client key, InvalidArgument for bad
// input, Canceled when the context ended. A command that exits non-zero is reported as an
// *ExitError.
package sshrunner
