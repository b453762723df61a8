package stacks

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/provider/version"
)

// installedPluginPath is where `pulumi plugin install resource understudy <version> -f`
// puts the binary inside PULUMI_HOME.
func installedPluginPath(home string) string {
	return filepath.Join(home, "plugins", "resource-"+PluginName+"-v"+version.Version, "pulumi-resource-"+PluginName)
}

// ensurePlugin installs cfg.PluginBin into PULUMI_HOME as plugin understudy at
// version.Version, unless the installed binary is already identical. Programs register
// the provider's resources with that version, so the engine finds it there and never
// tries to download it.
func (m *Manager) ensurePlugin(ctx context.Context) error {
	want, err := fileSHA256(m.cfg.PluginBin)
	if err != nil {
		return job.Wrap(job.CodeFailedPrecondition, err, "read provider plugin %s", m.cfg.PluginBin)
	}
	installed := installedPluginPath(m.cfg.Home)
	if got, err := fileSHA256(installed); err == nil && bytes.Equal(got, want) {
		return nil
	}
	cmd := exec.CommandContext(ctx, m.cfg.PulumiBin, "plugin", "install", "resource", PluginName, version.Version,
		"--file", m.cfg.PluginBin, "--reinstall", "--non-interactive")
	cmd.Env = os.Environ()
	for k, v := range m.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return job.Wrap(job.CodeFailedPrecondition, fmt.Errorf("%w: %s", err, bytes.TrimSpace(out)),
			"install provider plugin %s %s", PluginName, version.Version)
	}
	got, err := fileSHA256(installed)
	if err != nil || !bytes.Equal(got, want) {
		return job.Errorf(job.CodeFailedPrecondition, "install provider plugin %s %s: %s does not match %s",
			PluginName, version.Version, installed, m.cfg.PluginBin)
	}
	m.log.Info("installed provider plugin", "plugin", PluginName, "plugin_version", version.Version, "path", installed)
	return nil
}

func fileSHA256(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// PluginInstalled reports whether resource plugin name at version is installed in
// PULUMI_HOME (a finished install: its directory exists and no partial marker is left).
func (m *Manager) PluginInstalled(name, ver string) bool {
	dir := filepath.Join(m.cfg.Home, "plugins", "resource-"+name+"-v"+strings.TrimPrefix(ver, "v"))
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() {
		return false
	}
	_, err = os.Stat(dir + ".partial")
	return err != nil
}

// InstallPlugin makes sure resource plugin name at version (the version its SDK in go.mod
// asks for) is installed in PULUMI_HOME, downloading it from Pulumi's plugin registry when
// it is missing. The engine itself never downloads one (automatic acquisition is off), so a
// cloud program whose plugin could not be installed fails here, at start, naming it, rather
// than in a job's provisioning. Offline machines install it beforehand with
// `pulumi plugin install resource <name> <version> [-f <file>]` into the same PULUMI_HOME.
func (m *Manager) InstallPlugin(ctx context.Context, name, ver string) error {
	ver = strings.TrimPrefix(ver, "v")
	if m.PluginInstalled(name, ver) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, m.cfg.PulumiBin, "plugin", "install", "resource", name, ver, "--non-interactive")
	cmd.Env = os.Environ()
	for k, v := range m.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if err == nil && !m.PluginInstalled(name, ver) {
		err = fmt.Errorf("the CLI reported success but %s is missing", filepath.Join(m.cfg.Home, "plugins", "resource-"+name+"-v"+ver))
	}
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > 400 {
			msg = msg[len(msg)-400:]
		}
		return job.Wrap(job.CodeFailedPrecondition, fmt.Errorf("%w: %s", err, msg),
			"install Pulumi plugin %s v%s (offline: pulumi plugin install resource %s v%s -f <file>, with PULUMI_HOME=%s)",
			name, ver, name, ver, m.cfg.Home)
	}
	m.log.Info("installed Pulumi plugin", "plugin", name, "plugin_version", ver)
	return nil
}
