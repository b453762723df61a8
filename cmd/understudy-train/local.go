package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/understudy-ai/training-service/internal/sysuser"
	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/provider/sshd"
)

// defaultWorkersParent holds the workers of services whose local jobs run as a user of
// their own: the data dir (0700) is closed to that user, so its workers live outside it.
const defaultWorkersParent = "/var/lib/understudy"

// localSetup is where and as whom the local provider runs jobs.
type localSetup struct {
	Config programs.LocalConfig
	// NotReady says why local jobs cannot run (the status's "not configured: …"), or "".
	NotReady string
	// RuntimeCache is where local jobs keep the runtime's Python environment between jobs
	// when they bootstrap it themselves as a user with no home (UNDERSTUDY_CACHE), or "".
	RuntimeCache string
}

// configureLocal decides as whom local jobs run and where their workers live:
//
//   - a service running as root runs them as an unprivileged user of their own
//     (--local-user, default understudy-worker, created when missing), never as root, so
//     that a job cannot read the data dir, the passphrase or other secrets of the service;
//     their workers live under /var/lib/understudy/workers-<data dir hash>;
//   - a service running as another user runs them as itself (sshd can switch users only
//     when started by root), under <data dir>/workers: docs/security.md says what that
//     allows.
//
// The workers dir and its parents must satisfy sshd's StrictModes. When the job's user
// cannot run the local Python, local is "not configured", naming the fix.
func configureLocal(ctx context.Context, cfg Config, dataDir string, log *slog.Logger) (localSetup, error) {
	me, err := user.Current()
	if err != nil {
		return localSetup{}, fmt.Errorf("look up current user: %w", err)
	}
	name := cfg.LocalUser
	root := os.Geteuid() == 0
	if name == "" && root {
		name = sysuser.DefaultWorker
	}
	if name == "root" {
		return localSetup{}, usageError("--local-user root: local jobs never run as root; name an unprivileged user (default " + sysuser.DefaultWorker + ")")
	}
	other := name != "" && name != me.Username
	if other && !root {
		return localSetup{}, usageError(fmt.Sprintf("--local-user %s: only a service running as root can run jobs as another user; "+
			"as %s, local jobs run as %s (leave --local-user unset)", name, me.Username, me.Username))
	}
	var jobUser *user.User
	workers := cfg.LocalWorkersDir
	if other {
		if jobUser, err = sysuser.Ensure(ctx, name); err != nil {
			return localSetup{}, fmt.Errorf("local jobs' user: %w", err)
		}
		if workers == "" {
			sum := sha256.Sum256([]byte(dataDir))
			workers = filepath.Join(defaultWorkersParent, "workers-"+hex.EncodeToString(sum[:6]))
		}
	} else if workers == "" {
		workers = filepath.Join(dataDir, "workers")
	}
	if !filepath.IsAbs(workers) {
		if workers, err = filepath.Abs(workers); err != nil {
			return localSetup{}, err
		}
	}
	if err := makeWorkersDir(workers, other); err != nil {
		return localSetup{}, err
	}
	setup := localSetup{Config: programs.LocalConfig{BaseDir: workers}}
	if other {
		setup.Config.User = jobUser.Username
		if cfg.LocalPython != "" {
			if err := canRun(ctx, jobUser, cfg.LocalPython); err != nil {
				setup.NotReady = err.Error()
			}
		} else if setup.RuntimeCache, err = makeRuntimeCache(workers, jobUser); err != nil {
			return localSetup{}, err
		}
	}
	log.Info("local jobs", "user", cmp.Or(setup.Config.User, me.Username), "workers", workers)
	return setup, nil
}

// makeRuntimeCache makes <workers>/runtime-cache, owned by the jobs' user and closed to
// everyone else. That user has no home, so without it each job would build the runtime's
// Python environment (PyTorch: gigabytes) in its own work dir and lose it at teardown; the
// runtime's bootstrap builds it here once and every later job reuses it.
func makeRuntimeCache(workers string, u *user.User) (string, error) {
	dir := filepath.Join(workers, "runtime-cache")
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return "", fmt.Errorf("local jobs' user %s: uid %q, gid %q", u.Username, u.Uid, u.Gid)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return "", fmt.Errorf("create the local jobs' runtime cache: %w", err)
	}
	if err := os.Lchown(dir, uid, gid); err != nil {
		return "", fmt.Errorf("create the local jobs' runtime cache: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", fmt.Errorf("create the local jobs' runtime cache: %w", err)
	}
	return dir, nil
}

// makeWorkersDir makes the workers dir: owner-only when the jobs run as this user, else
// traversable (0711) so that each job's user reaches its own work dir and nothing else.
func makeWorkersDir(dir string, other bool) error {
	mode := os.FileMode(0o700)
	if other {
		mode = 0o711
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return fmt.Errorf("create local workers dir: %w", err)
		}
	}
	if err := os.MkdirAll(dir, mode); err != nil {
		return fmt.Errorf("create local workers dir: %w", err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		return fmt.Errorf("local workers dir: %w", err)
	}
	// Every job runs a sshd on files under dir; with StrictModes it refuses them when a
	// directory above is group- or world-writable (such as /tmp).
	if err := sshd.CheckSafePath(dir); err != nil {
		return fmt.Errorf("%s cannot hold the local provider's machines: %w; "+
			"choose a directory whose parents are owned by you or root and not group- or world-writable (not under /tmp)", dir, err)
	}
	if other {
		// The jobs' user must pass through every directory above its work dir.
		for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
			st, err := os.Stat(p)
			if err != nil {
				return fmt.Errorf("local workers dir: %w", err)
			}
			if st.Mode().Perm()&0o001 == 0 {
				return fmt.Errorf("%s cannot hold the local provider's machines: the jobs' user cannot pass through %s (mode %v); "+
					"choose a directory outside it, such as the default under %s", dir, p, st.Mode().Perm(), defaultWorkersParent)
			}
			if p == "/" {
				return nil
			}
		}
	}
	return nil
}

// canRun checks that u can run python and import torch, as a local job will.
func canRun(ctx context.Context, u *user.User, python string) error {
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-c", "import torch")
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/nonexistent"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return fmt.Errorf("user %s cannot run %s (%v: %s); build the environment where that user can read it "+
		"(as root, scripts/pyenv.sh keeps it under /var/cache/understudy) or pass another --local-python",
		u.Username, python, err, lines[len(lines)-1])
}
