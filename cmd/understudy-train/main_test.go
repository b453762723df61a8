package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/testenv"
)

func TestConfigValidateNamesTheField(t *testing.T) {
	good := Config{Listen: "127.0.0.1:8080", DataDir: "d", MaxConcurrent: 4, LogFormat: "text", LogLevel: "info"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(*Config){
		"--listen":           func(c *Config) { c.Listen = "8080" },
		"--data-dir":         func(c *Config) { c.DataDir = "" },
		"--max-concurrent":   func(c *Config) { c.MaxConcurrent = 0 },
		"--log-format":       func(c *Config) { c.LogFormat = "xml" },
		"--log-level":        func(c *Config) { c.LogLevel = "loud" },
		"--max-attempts":     func(c *Config) { c.MaxAttempts = -1 },
		"--checkpoint-every": func(c *Config) { c.CheckpointEvery = time.Millisecond },
		"--hub-endpoint":     func(c *Config) { c.HubEndpoint = "huggingface.co" },
		"--store-url":        func(c *Config) { c.StoreURL = "postgres://svc:hunter2@db/jobs" },
	}
	for field, mutate := range cases {
		c := good
		mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), field) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: got %v", field, err)
		}
	}
	for _, u := range []string{"sqlite:///x.db", "mysql://svc@db/jobs", "postgresql://svc@db/jobs?password=hunter2"} {
		c := good
		c.StoreURL = u
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--store-url") || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("--store-url %s: got %v", u, err)
		}
	}
	c := good
	c.StoreURL = "postgres://svc@db.internal:5432/jobs?sslmode=verify-full"
	if err := c.Validate(); err != nil {
		t.Errorf("a PostgreSQL URL without a password: %v", err)
	}
	for _, u := range []string{"10.0.0.5:8080", "ftp://h:1", "http://", "http://u:p@h:1", "http://h:1/api", "http://h:1?x=1"} {
		c := good
		c.AdvertiseURL = u
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--advertise-url") {
			t.Errorf("--advertise-url %s: got %v", u, err)
		}
	}
}

// Where the other replicas reach this one: the flag, else the listen address unless it is
// a wildcard.
func TestAdvertiseURL(t *testing.T) {
	for _, tc := range []struct{ listen, flag, want string }{
		{"127.0.0.1:8080", "", "http://127.0.0.1:8080"},
		{"10.1.2.3:9000", "", "http://10.1.2.3:9000"},
		{"svc.internal:8080", "", "http://svc.internal:8080"},
		{"0.0.0.0:8080", "", ""},
		{"[::]:8080", "", ""},
		{":8080", "", ""},
		{"0.0.0.0:8080", "http://10.0.0.7:8080/", "http://10.0.0.7:8080"},
	} {
		if got := advertiseURL(Config{Listen: tc.listen, AdvertiseURL: tc.flag}); got != tc.want {
			t.Errorf("listen %s, flag %q: %q, want %q", tc.listen, tc.flag, got, tc.want)
		}
	}
}

// Port 0 listens on a free port, which the derived URLs then name; the host stays as given.
func TestListeningOnPortZero(t *testing.T) {
	picked := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 41234}
	for _, tc := range []struct{ listen, want string }{
		{"127.0.0.1:0", "127.0.0.1:41234"},
		{"localhost:0", "localhost:41234"},
		{":0", ":41234"},
		{"127.0.0.1:8080", "127.0.0.1:8080"},
	} {
		got := listening(tc.listen, picked)
		if got != tc.want {
			t.Errorf("listen %s: %q, want %q", tc.listen, got, tc.want)
		}
		if tc.listen == "127.0.0.1:0" && advertiseURL(Config{Listen: got}) != "http://127.0.0.1:41234" {
			t.Errorf("advertised %q", advertiseURL(Config{Listen: got}))
		}
	}
}

func TestAPITokenIsMadeOwnerOnlyAndReused(t *testing.T) {
	t.Setenv("UNDERSTUDY_API_TOKEN", "")
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tok, err := apiToken("", dir, log)
	if err != nil || len(tok) < 32 {
		t.Fatalf("token %q, %v", tok, err)
	}
	st, err := os.Stat(filepath.Join(dir, "api-token"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", st, err)
	}
	again, err := apiToken("", dir, log)
	if err != nil || again != tok {
		t.Fatalf("second start made a new token: %q vs %q (%v)", again, tok, err)
	}
	t.Setenv("UNDERSTUDY_API_TOKEN", "from-env-0123456789abcdefghij")
	if tok, err := apiToken("", dir, log); err != nil || tok != "from-env-0123456789abcdefghij" {
		t.Fatalf("environment not preferred: %q %v", tok, err)
	}
}

func TestSecretFilesReadableByOthersAreRefused(t *testing.T) {
	p := filepath.Join(t.TempDir(), "token")
	os.WriteFile(p, []byte("s3cret\n"), 0o644)
	if _, err := readSecretFile(p); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Fatalf("got %v", err)
	}
	os.Chmod(p, 0o600)
	if v, err := readSecretFile(p); err != nil || v != "s3cret" {
		t.Fatalf("got %q, %v", v, err)
	}
}

func TestUsageErrors(t *testing.T) {
	cases := [][]string{
		{},
		{"frobnicate"},
		{"serve", "--max-concurrent", "0"},
		{"serve", "extra"},
		{"serve", "--hub-endpoint", "https://user:pw@hub.example"},
		{"status"},
		{"start", "--dataset", "x.jsonl"},
	}
	t.Setenv("UNDERSTUDY_API_TOKEN", "t")
	for _, args := range cases {
		var out, errb bytes.Buffer
		err := run(context.Background(), args, &out, &errb)
		if err == nil || exitCode(err) != 2 {
			t.Errorf("%v: got %v (exit %d), want a usage error", args, err, exitCode(err))
		}
	}
}

func TestHubCheckFromTheEnvironment(t *testing.T) {
	t.Setenv("UNDERSTUDY_API_TOKEN", "t")
	t.Setenv("UNDERSTUDY_HUB_CHECK", "sometimes")
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"serve"}, &out, &errb)
	if exitCode(err) != 2 || !strings.Contains(err.Error(), "UNDERSTUDY_HUB_CHECK") {
		t.Fatalf("got %v (exit %d), want a usage error naming UNDERSTUDY_HUB_CHECK", err, exitCode(err))
	}
}

func TestRenderProgress(t *testing.T) {
	cases := map[string]string{
		`{"v":1,"event":"step","time":1,"step":10,"total_steps":108,"epoch":0.28,"loss":5.88281,"learning_rate":0.00096,"tokens_per_second":337,"eta_seconds":37.9}`: "[train] step 10/108  epoch 0.28  loss 5.8828  lr 9.60e-04  337 tok/s  eta 38s",
		`{"v":1,"event":"error","time":1,"code":"invalid_model","message":"no model"}`:                                                                               "[train] error invalid_model: no model",
		`not json`: "[runtime] not json",
	}
	for in, want := range cases {
		if got := render("progress", in); got != want {
			t.Errorf("render(%s) = %q, want %q", in, got, want)
		}
	}
	if got := render("service", "status: queued"); got != "[service] status: queued" {
		t.Errorf("other streams: %q", got)
	}
}

func TestStartChecksTheDatasetBeforeSending(t *testing.T) {
	t.Setenv("UNDERSTUDY_API_TOKEN", "t")
	// Nothing listens here: the check must fail before any request.
	t.Setenv("UNDERSTUDY_URL", "http://127.0.0.1:1")
	p := filepath.Join(t.TempDir(), "bad.jsonl")
	os.WriteFile(p, []byte("{\"prompt\":\"a\",\"response\":\"b\"}\n{\"prompt\":\"a\"}\n"), 0o600)
	err := run(context.Background(), []string{"start", "--endpoint-id", "e", "--dataset", p}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "response") {
		t.Fatalf("got %v, want the dataset's bad line named", err)
	}
}

func TestWeakOrPlaceholderTokensAreRefused(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, tok := range []string{"change-me", "CHANGEME-0123456789abcdefghij", "short-but-random-1", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		"my-secret-token-0123456789"} {
		t.Setenv("UNDERSTUDY_API_TOKEN", tok)
		if _, err := apiToken("", t.TempDir(), log); err == nil || !strings.Contains(err.Error(), "$UNDERSTUDY_API_TOKEN") {
			t.Errorf("%q: %v, want a refusal naming its source", tok, err)
		}
	}
	t.Setenv("UNDERSTUDY_API_TOKEN", "")
	p := filepath.Join(t.TempDir(), "token")
	os.WriteFile(p, []byte("change-me\n"), 0o600)
	if _, err := apiToken(p, t.TempDir(), log); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("placeholder in a token file: %v", err)
	}
	t.Setenv("UNDERSTUDY_API_TOKEN", "3f9c1d2e8b7a6054c3b2a1f0e9d8c7b6")
	if _, err := apiToken("", t.TempDir(), log); err != nil {
		t.Errorf("a random token: %v", err)
	}
}

// A secret mounted for a non-root process by a container platform: root's, readable by the
// process's group only (mode 0440) — taken; readable by others — refused.
func TestPlatformMountedSecretFiles(t *testing.T) {
	testenv.RequireRoot(t, "a secret file owned by root")
	p := filepath.Join(t.TempDir(), "token")
	os.WriteFile(p, []byte("3f9c1d2e8b7a6054c3b2a1f0e9d8c7b6\n"), 0o440)
	os.Chmod(p, 0o440)
	if _, err := readSecretFile(p); err != nil {
		t.Errorf("0440 root:own-group: %v", err)
	}
	os.Chmod(p, 0o444)
	if _, err := readSecretFile(p); err == nil {
		t.Error("0444 accepted")
	}
}
