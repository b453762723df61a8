// Package sysuser provides the unprivileged system user that local jobs run as when the
// service runs as root: it is created on first use and checked on every start, so that a
// job never runs as root or as the service's own user by accident.
package sysuser

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"regexp"
	"strings"
)

// DefaultWorker is the user local jobs run as when the service runs as root.
const DefaultWorker = "understudy-worker"

var namePattern = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// Ensure returns the user name, creating it as a system user when it does not exist: its
// own group, no home directory, a shell for sshd to run commands with, and a password
// field that is unusable but not locked (sshd without PAM refuses locked accounts). Only
// root can create users. An existing user is checked as Check does.
func Ensure(ctx context.Context, name string) (*user.User, error) {
	if !namePattern.MatchString(name) {
		return nil, fmt.Errorf("user %q: want a system user name (lower-case letters, digits, '_', '-')", name)
	}
	if _, err := user.Lookup(name); err != nil {
		var unknown user.UnknownUserError
		if !errors.As(err, &unknown) {
			return nil, fmt.Errorf("look up user %q: %w", name, err)
		}
		if os.Geteuid() != 0 {
			return nil, fmt.Errorf("user %q does not exist, and only root can create it", name)
		}
		out, err := exec.CommandContext(ctx, "useradd", "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", "/bin/sh", "--password", "*",
			"--comment", "Understudy local training jobs", name).CombinedOutput()
		// Two services starting at once may both try: the loser finds the user made.
		if _, lerr := user.Lookup(name); err != nil && lerr != nil {
			return nil, fmt.Errorf("create user %q: %v: %s", name, err, strings.TrimSpace(string(out)))
		}
	}
	return Check(name)
}

// Check returns the user if local jobs may run as it: it exists, is not root and its
// account is not locked (sshd without PAM refuses a locked account, which would fail every
// job at its first login instead of at start).
func Check(name string) (*user.User, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("look up user %q: %w", name, err)
	}
	if u.Uid == "0" {
		return nil, fmt.Errorf("user %q is root: jobs never run as root", name)
	}
	locked, err := lockedAccount(name)
	if err != nil {
		return nil, err
	}
	if locked {
		return nil, fmt.Errorf("user %q has a locked account, which sshd refuses; unlock it without a usable password: usermod -p '*' %s", name, name)
	}
	return u, nil
}

// lockedAccount reports whether /etc/shadow marks name's password locked ('!'), as
// OpenSSH's check on Linux does. Without a readable shadow file (not root), it says no.
func lockedAccount(name string) (bool, error) {
	f, err := os.Open("/etc/shadow")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
			return false, nil
		}
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.SplitN(sc.Text(), ":", 3)
		if len(fields) >= 2 && fields[0] == name {
			return strings.HasPrefix(fields[1], "!"), nil
		}
	}
	return false, sc.Err()
}
