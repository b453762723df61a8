package cloudapi

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrNotSet is wrapped by Secret's error when neither NAME nor NAME_FILE is set.
var ErrNotSet = errors.New("not set")

// Secret returns the value of the secret name: the environment variable name, else the
// contents of the file named by name+"_FILE" (as Kubernetes mounts secrets), trimmed. A
// file that group or others may read is refused with an error naming it. The error never
// holds the secret.
func Secret(name string) (string, error) {
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v, nil
	}
	path := os.Getenv(name + "_FILE")
	if path == "" {
		return "", fmt.Errorf("%s (or %s_FILE): %w", name, name, ErrNotSet)
	}
	return ReadSecretFile(path)
}

// ReadSecretFile reads a secret or key file, refusing one that group or others may read.
func ReadSecretFile(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("secret file %s: %w", path, err)
	}
	if st.IsDir() {
		return "", fmt.Errorf("secret file %s is a directory", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("secret file %s is readable by group or others (mode %04o); chmod 600 it", path, st.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("secret file %s: %w", path, err)
	}
	v := strings.TrimSpace(string(data))
	if v == "" {
		return "", fmt.Errorf("secret file %s is empty", path)
	}
	return v, nil
}
