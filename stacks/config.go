package stacks

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/understudy-ai/training-service/job"
)

// Project is the Pulumi project of every job stack; Pulumi.yaml at the repository root
// names the same project so that an operator's CLI sees the same stacks.
const Project = "understudy-training"

// PluginName is the in-repo provider's plugin name; its binary is pulumi-resource-understudy.
const PluginName = "understudy"

// Config configures a Manager. Every field has a default; see each field.
type Config struct {
	// DataDir is the service's data directory; the other defaults live under it.
	// Default ".understudy" (made absolute).
	DataDir string
	// BackendURL is the Pulumi state backend. Default "file://<DataDir>/pulumi".
	BackendURL string
	// Home is PULUMI_HOME: installed plugins and the CLI's own files. Default
	// "<DataDir>/pulumi-home".
	Home string
	// PulumiBin is the pinned Pulumi CLI. Default: "pulumi" next to the running
	// executable, else "pulumi" on PATH.
	PulumiBin string
	// PluginBin is the in-repo provider's binary, pulumi-resource-understudy. Default: next
	// to the running executable, else on PATH.
	PluginBin string
	// Passphrase encrypts the stacks' secrets. When empty, the passphrase is read from
	// PassphraseFile, which is created with a random passphrase if it does not exist.
	Passphrase string
	// PassphraseFile holds the passphrase (owner-only permissions required). Default
	// "<DataDir>/pulumi-passphrase". An operator's CLI uses the same file through
	// PULUMI_CONFIG_PASSPHRASE_FILE.
	PassphraseFile string
	// Env is extra environment for the Pulumi CLI and the plugins it starts: cloud
	// credentials the service resolved from files (AWS_SECRET_ACCESS_KEY, ARM_CLIENT_SECRET,
	// …) and an object-store backend's own settings. The Pulumi settings the manager owns
	// (PULUMI_HOME, PULUMI_BACKEND_URL, the passphrase, plugin acquisition) win over it.
	// Values are never logged.
	Env map[string]string
	// Logger receives one record per stack operation; never key material. Default: discard.
	Logger *slog.Logger
}

// Backend kinds, by the scheme of BackendURL.
const (
	BackendFile   = "file"   // file:///abs/path: a directory on this host (the default)
	BackendS3     = "s3"     // s3://bucket?region=…&endpoint=…&use_path_style=true (gocloud.dev conventions)
	BackendGCS    = "gs"     // gs://bucket
	BackendAzure  = "azblob" // azblob://container
	BackendPulumi = "https"  // https://api.pulumi.com (Pulumi Cloud; needs PULUMI_ACCESS_TOKEN)
)

// BackendKind returns the kind of a backend URL, or an error naming what is wrong with it.
// Credentials never belong in the URL: they come from the environment (AWS_*, GOOGLE_*,
// AZURE_STORAGE_*, PULUMI_ACCESS_TOKEN).
func BackendKind(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return "", fmt.Errorf("%q: want a URL such as file:///var/lib/understudy/pulumi, s3://bucket, gs://bucket, azblob://container or https://api.pulumi.com", raw)
	}
	if u.User != nil {
		return "", fmt.Errorf("%q: credentials do not belong in the URL; give them through the environment", redactURL(raw))
	}
	switch u.Scheme {
	case BackendFile:
		if !filepath.IsAbs(strings.TrimPrefix(raw, "file://")) || u.RawQuery != "" {
			return "", fmt.Errorf("%q: a file:// backend needs an absolute path", raw)
		}
	case BackendS3, BackendGCS, BackendAzure:
		if u.Host == "" {
			return "", fmt.Errorf("%q: name the bucket (%s://<bucket>)", raw, u.Scheme)
		}
		for k := range u.Query() {
			switch strings.ToLower(k) {
			case "access_key_id", "secret_access_key", "session_token", "accesskey", "secretkey", "key", "sas_token", "credentials":
				return "", fmt.Errorf("%q: parameter %q: credentials do not belong in the URL; give them through the environment", redactURL(raw), k)
			}
		}
	case BackendPulumi, "http":
		if u.Host == "" {
			return "", fmt.Errorf("%q: name the Pulumi Cloud host", raw)
		}
		return BackendPulumi, nil
	default:
		return "", fmt.Errorf("%q: scheme %q is not a Pulumi backend (file, s3, gs, azblob or https)", raw, u.Scheme)
	}
	return u.Scheme, nil
}

// withDefaults returns cfg with every empty field set to its default.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.DataDir == "" {
		cfg.DataDir = ".understudy"
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return cfg, job.Wrap(job.CodeInvalidArgument, err, "stacks config: DataDir")
	}
	cfg.DataDir = abs
	if cfg.BackendURL == "" {
		cfg.BackendURL = "file://" + filepath.Join(cfg.DataDir, "pulumi")
	}
	if cfg.Home == "" {
		cfg.Home = filepath.Join(cfg.DataDir, "pulumi-home")
	}
	if cfg.Home, err = filepath.Abs(cfg.Home); err != nil {
		return cfg, job.Wrap(job.CodeInvalidArgument, err, "stacks config: Home")
	}
	if cfg.PassphraseFile == "" {
		cfg.PassphraseFile = filepath.Join(cfg.DataDir, "pulumi-passphrase")
	}
	if cfg.PulumiBin == "" {
		cfg.PulumiBin = besideExecutableOrPath("pulumi")
	}
	if cfg.PluginBin == "" {
		cfg.PluginBin = besideExecutableOrPath("pulumi-resource-" + PluginName)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}

// besideExecutableOrPath finds name next to the running executable, then on PATH. It
// returns "" when neither has it; Validate then names the field.
func besideExecutableOrPath(name string) string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			return abs
		}
	}
	return ""
}

// Validate reports the first bad field of a defaulted config.
func (cfg Config) Validate() error {
	bad := func(format string, args ...any) error {
		return job.Errorf(job.CodeInvalidArgument, "stacks config: "+format, args...)
	}
	kind, err := BackendKind(cfg.BackendURL)
	if err != nil {
		return bad("BackendURL %v", err)
	}
	if kind == BackendPulumi && cfg.Env["PULUMI_ACCESS_TOKEN"] == "" && os.Getenv("PULUMI_ACCESS_TOKEN") == "" {
		return bad("BackendURL %q: Pulumi Cloud needs PULUMI_ACCESS_TOKEN (or PULUMI_ACCESS_TOKEN_FILE)", cfg.BackendURL)
	}
	for k := range cfg.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return bad("Env: bad variable name %q", k)
		}
	}
	for field, p := range map[string]string{"PulumiBin": cfg.PulumiBin, "PluginBin": cfg.PluginBin} {
		if p == "" {
			return bad("%s: not set, and not found next to the executable or on PATH", field)
		}
		st, err := os.Stat(p)
		if err != nil {
			return bad("%s %q: %v", field, p, err)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return bad("%s %q: not an executable file", field, p)
		}
	}
	if cfg.Passphrase == "" && cfg.PassphraseFile == "" {
		return bad("Passphrase or PassphraseFile: one is required")
	}
	return nil
}

// passphraseFromFile reads the passphrase file, creating it with a random passphrase when
// it does not exist. A file that group or others may read is refused.
func passphraseFromFile(name string) (string, error) {
	st, err := os.Stat(name)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
			return "", err
		}
		buf := make([]byte, 32)
		if _, err := rand.Read(buf); err != nil {
			return "", err
		}
		pass := base64.RawURLEncoding.EncodeToString(buf)
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return "", err
		}
		if _, err := f.WriteString(pass + "\n"); err != nil {
			f.Close()
			return "", err
		}
		if err := f.Close(); err != nil {
			return "", err
		}
		return pass, nil
	}
	if err != nil {
		return "", err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("passphrase file %s is readable by others (mode %v); chmod 600 it", name, st.Mode().Perm())
	}
	data, err := os.ReadFile(name)
	if err != nil {
		return "", err
	}
	pass := strings.TrimSpace(string(data)) // as the Pulumi CLI reads PULUMI_CONFIG_PASSPHRASE_FILE
	if pass == "" {
		return "", fmt.Errorf("passphrase file %s is empty", name)
	}
	return pass, nil
}
