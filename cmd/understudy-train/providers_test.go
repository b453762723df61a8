package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func getenv(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestProvidersNotConfiguredNameTheVariable(t *testing.T) {
	p, err := loadProviders(getenv(nil))
	if err != nil {
		t.Fatal(err)
	}
	if p.status["local"] != "ready" {
		t.Errorf("local: %q", p.status["local"])
	}
	for name, v := range map[string]string{"runpod": "RUNPOD_API_KEY", "lambda": "LAMBDA_API_KEY"} {
		if !strings.HasPrefix(p.status[name], "not configured: "+v) || !strings.Contains(p.programs.NotConfigured[name], v+"_FILE") {
			t.Errorf("%s: status %q, not configured %q", name, p.status[name], p.programs.NotConfigured[name])
		}
	}
	if p.runpod != nil || p.lambda != nil {
		t.Error("clients made without keys")
	}
}

func TestProvidersFromEnvironmentAndFiles(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "lambda-key")
	os.WriteFile(keyFile, []byte("secret-lambda\n"), 0o600)
	p, err := loadProviders(getenv(map[string]string{
		"RUNPOD_API_KEY": "rp-key", "RUNPOD_GPU_TYPE": "NVIDIA H100 80GB HBM3", "RUNPOD_DATA_CENTER_IDS": "US-TX-3, EU-RO-1",
		"RUNPOD_DISK_GB": "80", "RUNPOD_CLOUD": "community",
		"LAMBDA_API_KEY_FILE": keyFile, "LAMBDA_REGION": "us-east-1", "LAMBDA_SSH_PORT": "2222", "LAMBDA_SSH_KEY_NAME": "ops",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if p.status["runpod"] != "ready" || p.status["lambda"] != "ready" || p.runpod == nil || p.lambda == nil {
		t.Fatalf("status %v", p.status)
	}
	rp, lc := p.programs.RunPod, p.programs.Lambda
	if rp.GPUType != "NVIDIA H100 80GB HBM3" || strings.Join(rp.DataCenterIDs, ",") != "US-TX-3,EU-RO-1" || rp.DiskGB != 80 || rp.Cloud != "COMMUNITY" {
		t.Errorf("runpod config %+v", rp)
	}
	if lc.Region != "us-east-1" || lc.SSHPort != 2222 || lc.OperatorKeyName != "ops" {
		t.Errorf("lambda config %+v", lc)
	}
}

func TestProviderKeyFilesReadableByOthersAreRefused(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "runpod-key")
	os.WriteFile(keyFile, []byte("rp\n"), 0o644)
	_, err := loadProviders(getenv(map[string]string{"RUNPOD_API_KEY_FILE": keyFile}))
	if err == nil || !strings.Contains(err.Error(), keyFile) || !strings.Contains(err.Error(), "readable by group or others") {
		t.Fatalf("err = %v, want a refusal naming %s", err, keyFile)
	}
	if strings.Contains(err.Error(), "rp") && strings.Contains(err.Error(), "\nrp") {
		t.Error("error quotes the key")
	}
}

func TestOperatorKey(t *testing.T) {
	dir := t.TempDir()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, _ := ssh.MarshalPrivateKey(priv, "")
	path := filepath.Join(dir, "id_ed25519")
	os.WriteFile(path, pem.EncodeToMemory(block), 0o600)
	signer, _ := ssh.NewSignerFromKey(priv)
	want := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))

	p, err := loadProviders(getenv(map[string]string{"RUNPOD_SSH_PRIVATE_KEY_PATH": path}))
	if err != nil || p.programs.RunPod.OperatorKey != want {
		t.Fatalf("derived operator key %q, %v; want %q", p.programs.RunPod.OperatorKey, err, want)
	}
	os.Chmod(path, 0o640)
	if _, err := loadProviders(getenv(map[string]string{"RUNPOD_SSH_PRIVATE_KEY_PATH": path})); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("group-readable private key: %v", err)
	}
	if _, err := loadProviders(getenv(map[string]string{"RUNPOD_SSH_PUBLIC_KEY": "nonsense"})); err == nil || !strings.Contains(err.Error(), "RUNPOD_SSH_PUBLIC_KEY") {
		t.Fatalf("bad public key: %v", err)
	}
}

func TestProviderSettingsAreChecked(t *testing.T) {
	for env, mentions := range map[string]string{
		"RUNPOD_DISK_GB=lots":       "RUNPOD_DISK_GB",
		"LAMBDA_SSH_PORT=70000":     "LAMBDA_SSH_PORT",
		"RUNPOD_CLOUD=moon":         "Cloud",
		"RUNPOD_WORK_DIR=relative":  "WorkDir",
		"LAMBDA_INSTANCE_TYPE=A 10": "InstanceType",
	} {
		k, v, _ := strings.Cut(env, "=")
		_, err := loadProviders(getenv(map[string]string{k: v}))
		if err == nil || !strings.Contains(err.Error(), mentions) {
			t.Errorf("%s: %v, want an error naming %s", env, err, mentions)
		}
	}
}
