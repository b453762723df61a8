// Package metrics exposes the service's Prometheus metrics. A Metrics is a
// lifecycle.Observer: it learns of jobs from the Driver's changes only, and keeps state for
// the jobs that are not yet terminal. docs/operations.md lists the metrics and how to read
// them.
package metrics
