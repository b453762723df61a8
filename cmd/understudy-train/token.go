package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// apiToken returns the API token from the environment, the token file, or a new one made
// and written 0600 into the data dir.
func apiToken(tokenFile, dataDir string, log *slog.Logger) (string, error) {
	if t := strings.TrimSpace(os.Getenv("UNDERSTUDY_API_TOKEN")); t != "" {
		return t, checkToken(t, "$UNDERSTUDY_API_TOKEN")
	}
	if tokenFile != "" {
		t, err := readSecretFile(tokenFile)
		if err != nil {
			return "", err
		}
		return t, checkToken(t, "the token file "+tokenFile)
	}
	p := filepath.Join(dataDir, "api-token")
	if t, err := readSecretFile(p); err == nil {
		log.Info("using the API token", "file", p)
		return t, checkToken(t, "the token file "+p)
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	t := randomHex(32)
	if err := os.WriteFile(p, []byte(t+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write API token: %w", err)
	}
	log.Info("made a new API token", "file", p)
	return t, nil
}

// MinTokenLength is the shortest API token the service takes.
const MinTokenLength = 24

// placeholders are words of example tokens that must never guard a running service.
var placeholders = []string{"change-me", "changeme", "change_me", "replace-me", "replaceme", "your-token",
	"yourtoken", "example", "placeholder", "password", "secret", "insecure", "default"}

// checkToken refuses a weak API token: short, of few distinct characters, or a placeholder
// from an example. from names where it came from.
func checkToken(t, from string) error {
	distinct := map[rune]bool{}
	for _, r := range t {
		distinct[r] = true
	}
	lower := strings.ToLower(t)
	for _, w := range placeholders {
		if strings.Contains(lower, w) {
			return fmt.Errorf("the API token from %s looks like a placeholder (%q): use a random one, e.g. `openssl rand -hex 32`", from, w)
		}
	}
	if len(t) < MinTokenLength || len(distinct) < 10 {
		return fmt.Errorf("the API token from %s is too weak (%d characters, %d distinct; want at least %d random characters): use e.g. `openssl rand -hex 32`",
			from, len(t), len(distinct), MinTokenLength)
	}
	return nil
}

// readSecretFile reads a secret, refusing a file that others can read. A file that root
// owns and only the process's own group may also read is taken: that is how a container
// platform mounts a secret for a non-root user (Kubernetes: defaultMode 0400 with fsGroup).
func readSecretFile(p string) (string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	perm := st.Mode().Perm()
	if perm&0o077 != 0 && !(perm&0o037 == 0 && ownedByRootForMyGroup(st)) {
		return "", fmt.Errorf("secret file %s is readable by others (mode %o); chmod 600 it", p, perm)
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	t := strings.TrimSpace(string(raw))
	if t == "" {
		return "", fmt.Errorf("secret file %s is empty", p)
	}
	return t, nil
}

// ownedByRootForMyGroup reports whether a file is root's and its group is this process's.
func ownedByRootForMyGroup(st os.FileInfo) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && sys.Uid == 0 && int(sys.Gid) == os.Getegid()
}
