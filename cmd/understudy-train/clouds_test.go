package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCloudsNotConfiguredNameEveryMissingVariable(t *testing.T) {
	p, err := loadProviders(getenv(nil))
	if err != nil {
		t.Fatal(err)
	}
	for name, vars := range map[string][]string{
		"aws":   {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY_FILE", "AWS_REGION", EnvSSHIngress},
		"gcp":   {"GOOGLE_PROJECT", "GOOGLE_ZONE", "GOOGLE_APPLICATION_CREDENTIALS", EnvSSHIngress},
		"azure": {"AZURE_SUBSCRIPTION_ID", "AZURE_LOCATION", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET_FILE", EnvSSHIngress},
	} {
		st := p.status[name]
		if !strings.HasPrefix(st, "not configured: ") {
			t.Errorf("%s: status %q", name, st)
		}
		for _, v := range vars {
			if !strings.Contains(p.programs.NotConfigured[name], v) {
				t.Errorf("%s: %q does not name %s", name, p.programs.NotConfigured[name], v)
			}
		}
	}
	if len(p.engineEnv) != 0 {
		t.Errorf("engine environment of unconfigured clouds: %v", keys(p.engineEnv))
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestCloudsFromEnvironmentAndFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	env := map[string]string{
		EnvSSHIngress:                    "203.0.113.7/32, 2001:db8::/64",
		"AWS_ACCESS_KEY_ID":              "AKIAEXAMPLE",
		"AWS_SECRET_ACCESS_KEY_FILE":     write("aws-secret", "aws-secret-value\n", 0o600),
		"AWS_REGION":                     "us-west-2",
		"AWS_INSTANCE_TYPE":              "g6.xlarge",
		"AWS_DISK_GB":                    "200",
		"GOOGLE_PROJECT":                 "proj-1",
		"GOOGLE_ZONE":                    "us-central1-a",
		"GOOGLE_APPLICATION_CREDENTIALS": write("gcp.json", `{"type":"service_account"}`, 0o600),
		"GCP_GPU_TYPE":                   "nvidia-tesla-t4",
		"AZURE_SUBSCRIPTION_ID":          "00000000-0000-0000-0000-000000000001",
		"AZURE_LOCATION":                 "westeurope",
		"AZURE_CLIENT_ID":                "client",
		"AZURE_TENANT_ID":                "tenant",
		"AZURE_CLIENT_SECRET_FILE":       write("azure-secret", "azure-secret-value", 0o400),
		"AZURE_RESOURCE_GROUP":           "ml-jobs",
		"AZURE_SSH_KEY_NAME":             "ops-key",
	}
	p, err := loadProviders(getenv(env))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"aws", "gcp", "azure"} {
		if p.status[name] != "ready" {
			t.Errorf("%s: %q", name, p.status[name])
		}
	}
	if got := strings.Join(p.programs.SSHIngressCIDRs, ","); got != "203.0.113.7/32,2001:db8::/64" {
		t.Errorf("ingress %q", got)
	}
	a := p.programs.AWS
	if a.Region != "us-west-2" || a.InstanceType != "g6.xlarge" || a.DiskGB != 200 {
		t.Errorf("aws config %+v", a)
	}
	if p.programs.GCP.Project != "proj-1" || p.programs.GCP.GPUType != "nvidia-tesla-t4" {
		t.Errorf("gcp config %+v", p.programs.GCP)
	}
	if z := p.programs.Azure; z.ResourceGroup != "ml-jobs" || z.OperatorKeyName != "ops-key" || z.Location != "westeurope" {
		t.Errorf("azure config %+v", z)
	}
	// Secrets from files reach the plugins, under the names the plugins read.
	for k, v := range map[string]string{"AWS_SECRET_ACCESS_KEY": "aws-secret-value", "AWS_REGION": "us-west-2",
		"ARM_CLIENT_SECRET": "azure-secret-value", "ARM_SUBSCRIPTION_ID": env["AZURE_SUBSCRIPTION_ID"],
		"GOOGLE_APPLICATION_CREDENTIALS": env["GOOGLE_APPLICATION_CREDENTIALS"]} {
		if p.engineEnv[k] != v {
			t.Errorf("engine env %s = %q, want %q", k, p.engineEnv[k], v)
		}
	}
}

func TestCloudSettingsAreChecked(t *testing.T) {
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose")
	os.WriteFile(loose, []byte("s"), 0o644)
	base := map[string]string{EnvSSHIngress: "203.0.113.7/32", "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}
	for name, tc := range map[string]struct {
		env  map[string]string
		want string
	}{
		"bad cidr":          {map[string]string{EnvSSHIngress: "203.0.113.7"}, EnvSSHIngress},
		"host bits":         {map[string]string{EnvSSHIngress: "203.0.113.7/24"}, "did you mean 203.0.113.0/24"},
		"loose secret":      {map[string]string{"AWS_SECRET_ACCESS_KEY": "", "AWS_SECRET_ACCESS_KEY_FILE": loose}, loose},
		"bad disk":          {map[string]string{"AWS_DISK_GB": "lots"}, "AWS_DISK_GB"},
		"loose gcp creds":   {map[string]string{"GOOGLE_PROJECT": "p", "GOOGLE_ZONE": "z", "GOOGLE_APPLICATION_CREDENTIALS": loose}, "GOOGLE_APPLICATION_CREDENTIALS"},
		"bad instance type": {map[string]string{"AWS_INSTANCE_TYPE": "big gpu please"}, "aws configuration"},
	} {
		t.Run(name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tc.env {
				env[k] = v
			}
			_, err := loadProviders(getenv(env))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to name %q", err, tc.want)
			}
		})
	}
}
