package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/understudy-ai/training-service/internal/servicetest"
)

// cloudVariables clears every variable the AWS, GCP and Azure configuration reads, so that
// the test machine's own environment cannot configure a cloud.
var cloudVariables = []string{
	"AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID_FILE", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY_FILE",
	"AWS_REGION", "AWS_DEFAULT_REGION", "GOOGLE_PROJECT", "GOOGLE_CLOUD_PROJECT", "GOOGLE_ZONE",
	"GOOGLE_APPLICATION_CREDENTIALS", "AZURE_SUBSCRIPTION_ID", "AZURE_LOCATION", "AZURE_CLIENT_ID",
	"AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_SECRET_FILE", "AZURE_USE_MSI",
	"UNDERSTUDY_SSH_INGRESS_CIDRS",
}

// A start for AWS, GCP or Azure on a service that has no credentials for them is a 422
// naming what is missing, stores nothing, and /readyz says the same.
func TestUnconfiguredCloudsAreRefusedNamingWhatIsMissing(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	s := servicetest.New(t, bin, python)
	for _, v := range cloudVariables {
		s.Env = append(s.Env, v+"=")
	}
	s.Start()
	dataset := servicetest.WritePairs(t, 8)
	var ready struct {
		Providers map[string]string `json:"providers"`
	}
	if code := s.Request("GET", "/readyz", nil, &ready); code != 200 {
		t.Fatalf("readyz: %d", code)
	}
	for provider, names := range map[string][]string{
		"aws":   {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "UNDERSTUDY_SSH_INGRESS_CIDRS"},
		"gcp":   {"GOOGLE_PROJECT", "GOOGLE_ZONE", "GOOGLE_APPLICATION_CREDENTIALS"},
		"azure": {"AZURE_SUBSCRIPTION_ID", "AZURE_LOCATION", "AZURE_CLIENT_SECRET"},
	} {
		t.Run(provider, func(t *testing.T) {
			body := startBody("e2e-unconfigured-"+provider, model, dataset, 8, nil)
			body["provider"] = provider
			var out struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if code := s.Request("POST", "/api/v1/training/start", body, &out); code != 422 {
				t.Fatalf("start: %d %+v, want 422", code, out)
			}
			if out.Error.Code != "provider_not_configured" {
				t.Errorf("code %q, want provider_not_configured", out.Error.Code)
			}
			for _, n := range names {
				if !strings.Contains(out.Error.Message, n) {
					t.Errorf("message %q does not name %s", out.Error.Message, n)
				}
				if !strings.Contains(ready.Providers[provider], n) {
					t.Errorf("/readyz %s: %q does not name %s", provider, ready.Providers[provider], n)
				}
			}
			if code := s.Request("GET", "/api/v1/training/e2e-unconfigured-"+provider+"/status", nil, nil); code != 404 {
				t.Errorf("status after a refused start: %d, want 404 (nothing stored)", code)
			}
		})
	}
}

// A cloud that is configured but whose Pulumi plugin is not installed (and may not be
// downloaded here) is not ready: /readyz and a start name the plugin and its version, the
// one the SDK in go.mod asks for.
func TestConfiguredCloudWithoutItsPluginIsNotReady(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	s := servicetest.New(t, bin, python)
	creds := filepath.Join(t.TempDir(), "gcp.json")
	if err := os.WriteFile(creds, []byte(`{"type":"service_account"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Env = append(s.Env, "UNDERSTUDY_INSTALL_PLUGINS=false", "UNDERSTUDY_SSH_INGRESS_CIDRS=203.0.113.7/32",
		"AWS_ACCESS_KEY_ID=AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY=example", "AWS_REGION=us-east-1",
		"GOOGLE_PROJECT=example", "GOOGLE_ZONE=us-central1-a", "GOOGLE_APPLICATION_CREDENTIALS="+creds,
		"AZURE_SUBSCRIPTION_ID=00000000-0000-0000-0000-000000000000", "AZURE_LOCATION=eastus",
		"AZURE_CLIENT_ID=c", "AZURE_TENANT_ID=t", "AZURE_CLIENT_SECRET=s")
	s.Start()
	var ready struct {
		Providers map[string]string `json:"providers"`
	}
	s.Request("GET", "/readyz", nil, &ready)
	dataset := servicetest.WritePairs(t, 8)
	for provider, plugin := range map[string]string{"aws": "aws v6.83.4", "gcp": "gcp v7.38.0", "azure": "azure-native v2.90.0"} {
		if !strings.Contains(ready.Providers[provider], "plugin "+plugin) {
			t.Errorf("/readyz %s: %q does not name plugin %s", provider, ready.Providers[provider], plugin)
		}
		body := startBody("e2e-noplugin-"+provider, model, dataset, 8, nil)
		body["provider"] = provider
		var out struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if code := s.Request("POST", "/api/v1/training/start", body, &out); code != 422 || !strings.Contains(out.Error.Message, plugin) {
			t.Errorf("%s start: %d %+v, want 422 naming plugin %s", provider, code, out, plugin)
		}
	}
}
