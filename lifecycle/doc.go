// Package lifecycle drives each training job from queued to a terminal state: it provisions
// the job's machine through a Pulumi stack, uploads the runtime and data over SSH, follows
// training, downloads and verifies the weights, and always tears the stack down.
//
// The Driver talks to its collaborators through the narrow interfaces in seams.go, so tests
// can hand in failing parts; production wires the stacks and sshrunner packages through the
// adapters in adapt.go. A job only becomes terminal after its stack is destroyed, and a
// restarted Driver resumes every non-terminal job it finds in the store.
package lifecycle
