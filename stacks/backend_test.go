package stacks_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/stacks"
)

func TestBackendKinds(t *testing.T) {
	for raw, want := range map[string]string{
		"file:///var/lib/understudy/pulumi":                                              stacks.BackendFile,
		"s3://state?endpoint=http://127.0.0.1:9000&region=us-east-1&use_path_style=true": stacks.BackendS3,
		"gs://state":             stacks.BackendGCS,
		"azblob://state":         stacks.BackendAzure,
		"https://api.pulumi.com": stacks.BackendPulumi,
	} {
		got, err := stacks.BackendKind(raw)
		if err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", raw, got, err, want)
		}
	}
	for raw, want := range map[string]string{
		"file://relative/dir":             "absolute path",
		"s3://":                           "name the bucket",
		"s3://AKIA:secret@bucket":         "credentials do not belong",
		"s3://bucket?secret_access_key=x": "credentials do not belong",
		"azblob://c?sas_token=abc":        "credentials do not belong",
		"ftp://host/dir":                  "not a Pulumi backend",
		"no scheme":                       "want a URL",
	} {
		_, err := stacks.BackendKind(raw)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", raw, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "secret@") {
			t.Errorf("%s: error quotes the credentials: %v", raw, err)
		}
	}
}

// A cloud plugin that is installed (here from a file, as an offline operator would) is
// found without a download; one that is missing and cannot be downloaded fails naming the
// plugin, its version and the offline way.
func TestInstallPlugin(t *testing.T) {
	requireEngine(t)
	data := t.TempDir()
	m, err := stacks.Open(t.Context(), stacks.Config{
		DataDir: data, PulumiBin: pulumiBin, PluginBin: pluginBin, Logger: testLogger(t),
		// Every download goes to a port nothing listens on.
		Env: map[string]string{"PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES": ".*=http://127.0.0.1:1/plugins"},
	})
	if err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(data, "pulumi-home")
	fake := filepath.Join(t.TempDir(), "pulumi-resource-understudytest")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	install := exec.Command(pulumiBin, "plugin", "install", "resource", "understudytest", "1.2.3", "-f", fake, "--non-interactive")
	install.Env = append(os.Environ(), "PULUMI_HOME="+home, "PULUMI_SKIP_UPDATE_CHECK=true")
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("install from a file: %v\n%s", err, out)
	}
	if !m.PluginInstalled("understudytest", "v1.2.3") {
		t.Fatal("PluginInstalled does not see the plugin installed from a file")
	}
	if err := m.InstallPlugin(t.Context(), "understudytest", "1.2.3"); err != nil {
		t.Fatalf("InstallPlugin of an installed plugin: %v", err)
	}

	err = m.InstallPlugin(t.Context(), "understudymissing", "9.9.9")
	if job.CodeOf(err) != job.CodeFailedPrecondition {
		t.Fatalf("InstallPlugin of a plugin that cannot be downloaded: %v, want %s", err, job.CodeFailedPrecondition)
	}
	for _, want := range []string{"understudymissing v9.9.9", "-f <file>", home} {
		if !strings.Contains(job.MessageOf(err), want) {
			t.Errorf("message %q does not name %q", job.MessageOf(err), want)
		}
	}
	if m.PluginInstalled("understudymissing", "9.9.9") {
		t.Error("a failed install left the plugin looking installed")
	}
}
