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
