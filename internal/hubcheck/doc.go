// Package hubcheck asks a Hugging Face Hub, before any machine is rented, whether a model id
// names a model there: a slm_type that is not a local directory is downloaded by the training
// runtime on the machine, and a Hub that the service already knows to be unreachable, or a
// model it already knows to be missing, would otherwise fail the job only after the machine
// was paid for.
//
// The check is the service's view, not the machine's: a service without a route to the Hub
// may still drive machines that have one, which is why the check can be turned off.
package hubcheck
