// Package testenv decides what a test does when a part it needs (OpenSSH's sshd, root, the
// Pulumi CLI) is missing here: under `make test`, which sets UNDERSTUDY_E2E_REQUIRED, or in
// CI it fails, naming what is missing; run by hand elsewhere it skips, saying why.
package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/understudy-ai/training-service/provider/sshd"
)

// Required reports whether every test must run: under `make test` or in CI.
func Required() bool {
	return os.Getenv("UNDERSTUDY_E2E_REQUIRED") != "" || os.Getenv("CI") != ""
}

// Missing fails t (under `make test` or in CI) or skips it (elsewhere) because of why.
func Missing(t testing.TB, why string) {
	t.Helper()
	if Required() {
		t.Fatal("cannot run here: " + why)
	}
	t.Skip(why)
}

// RequireSSHD is for tests that start real OpenSSH sshd's which log in as the current
// user: that needs the server installed and an account it accepts (not locked).
func RequireSSHD(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(sshd.DefaultPath); err != nil {
		Missing(t, fmt.Sprintf("OpenSSH server not installed at %s (apt-get install openssh-server): %v", sshd.DefaultPath, err))
	}
}

// RequireRoot is for tests that act as root: create users, run processes as them.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, why+" needs root")
	}
}

// SSHDDir returns a fresh owner-only directory, removed when the test ends, that sshd's
// StrictModes accepts for key files: the usual temp dir sits under the world-writable /tmp,
// so it is made under the user's cache directory.
func SSHDDir(t testing.TB, prefix string) string {
	t.Helper()
	parent, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	parent = filepath.Join(parent, "understudy-test")
	if err := os.MkdirAll(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(parent, prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := sshd.CheckSafePath(dir); err != nil {
		t.Fatalf("no directory that sshd StrictModes accepts: %v", err)
	}
	return dir
}
