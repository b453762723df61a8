// Package job is the leaf of the service: the Job type, its states and the one table of
// allowed transitions, the request spec, and errors that carry a code. It imports nothing
// else of this module, so every other package may import it.
package job
