// Package webhook posts a job's status document to an operator's URL on every status change.
//
// A Notifier is a lifecycle.Observer: the Driver tells it of each change, it renders the
// document at once (the same one GET /api/v1/training/{train_id}/status returns), queues the
// delivery and returns; one background worker sends the queue in order. A delivery is signed
// (Sign, Verify), carries a unique id that its retries keep, and is retried with exponential
// backoff and jitter on network errors, 5xx and 429, within a bounded number of attempts and
// time. The queue is bounded: when it is full the oldest delivery is dropped, with a warning.
// Nothing a receiver does can block or fail a job.
package webhook
