package stacks_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/understudy-ai/training-service/internal/emulators"
	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/programs/programtest"
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

// Every object-store backend holds the job stacks as the file backend does: a stack is
// listed while its machine is up and gone once destroyed. The stores are the emulators the
// storage tests use (moto, fake-gcs-server, Azurite); the Pulumi CLI reaches them through
// the environment the manager passes on (Config.Env).
func TestObjectStoreBackends(t *testing.T) {
	requireEngine(t)
	for name, start := range map[string]func(testing.TB) emulators.Store{
		"s3":     func(t testing.TB) emulators.Store { return emulators.StartS3(t) },
		"gs":     func(t testing.TB) emulators.Store { return emulators.StartGCS(t) },
		"azblob": func(t testing.TB) emulators.Store { return emulators.StartAzurite(t) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			store := start(t)
			env := map[string]string{}
			for _, kv := range store.Env() {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = v
			}
			if name == "gs" {
				// Pulumi's GCS backend insists on Google credentials even for an emulator:
				// a service account whose token endpoint is a local stub.
				env["GOOGLE_CREDENTIALS"] = stubServiceAccount(t)
			}
			backend := store.BucketURL(store.NewBucket(t))
			if kind, err := stacks.BackendKind(backend); err != nil || kind != name {
				t.Fatalf("BackendKind(%s) = %q, %v", backend, kind, err)
			}
			m, err := stacks.Open(t.Context(), stacks.Config{DataDir: t.TempDir(), BackendURL: backend, Env: env,
				PulumiBin: pulumiBin, PluginBin: pluginBin, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			id := "tr-backend-" + name
			destroyOnCleanup(t, m, id)
			out, err := m.Up(t.Context(), localSpec(t, id, programtest.NewKeys(t), workerBaseDir(t)), nil)
			if err != nil {
				t.Fatalf("Up: %v", err)
			}
			m.Settle(id)
			listed := func() bool {
				list, err := m.List(t.Context())
				if err != nil {
					t.Fatalf("List: %v", err)
				}
				return slices.ContainsFunc(list, func(s stacks.Summary) bool { return s.Name == id })
			}
			if !listed() {
				t.Fatalf("the stack of a running machine (%s) is not listed in %s", out.InstanceID, backend)
			}
			if got, err := m.Outputs(t.Context(), id); err != nil || got.InstanceID != out.InstanceID {
				t.Fatalf("Outputs = %+v, %v", got, err)
			}
			if err := m.Destroy(t.Context(), id, nil); err != nil {
				t.Fatalf("Destroy: %v", err)
			}
			if listed() {
				t.Fatal("the destroyed stack is still listed")
			}
		})
	}
}

// stubServiceAccount returns service account credentials (JSON) with a fresh key whose
// token endpoint is a local server handing out a dummy access token.
func stubServiceAccount(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"access_token":"emulator","token_type":"Bearer","expires_in":3600}`)
	}))
	t.Cleanup(srv.Close)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	creds, _ := json.Marshal(map[string]string{
		"type": "service_account", "project_id": "understudy-test", "private_key_id": "k1",
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": "test@understudy-test.iam.gserviceaccount.com", "client_id": "1",
		"token_uri": srv.URL + "/token",
	})
	return string(creds)
}

// Two train_ids never share a stack: a train_id of 100 characters chosen to equal the
// shortened stack name of a longer one gets a stack of its own.
func TestStackNamesAreUniquePerTrainID(t *testing.T) {
	long := strings.Repeat("x", 128)
	taken := stacks.StackName(long)
	if len(taken) != 100 {
		t.Fatalf("StackName of a 128-character id has %d characters, want 100", len(taken))
	}
	if got := stacks.StackName(taken); got == taken {
		t.Fatalf("train_id %q gets the stack of train_id %q", taken, long)
	}
	for _, id := range []string{"a", strings.Repeat("y", 99)} {
		if got := stacks.StackName(id); got != id {
			t.Errorf("StackName(%q) = %q, want the id itself", id, got)
		}
	}
	if a, b := stacks.StackName(strings.Repeat("z", 100)), stacks.StackName(strings.Repeat("z", 101)); a == b {
		t.Errorf("ids of 100 and 101 characters share stack %q", a)
	}
}
