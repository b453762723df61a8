// Package e2e holds the end-to-end tests: the real understudy-train binary serving on
// loopback, the real Pulumi engine with a file backend, the in-repo provider's local worker
// (a real OpenSSH sshd per job) and the real Python training runtime on a tiny local model.
package e2e
