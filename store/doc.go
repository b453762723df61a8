// Package store persists jobs, their lifecycle events and their logs behind one small
// interface. Drivers live in sub-packages (sqlite now; PostgreSQL when several replicas
// share one database) and all pass the one conformance suite in storetest.
//
// Every write of a job is compare-and-set on its Revision, and a write that changes the
// status is checked against job's table of allowed transitions, so two writers can never
// both move a job, and no driver can store a move the table forbids.
package store
