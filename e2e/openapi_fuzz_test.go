package e2e

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/servicetest"
	"github.com/understudy-ai/training-service/internal/testenv"
)

// schemathesisEnv names the environment variable that holds the directory
// scripts/schemathesis.sh prints; the fuzzer is its bin/schemathesis.
const schemathesisEnv = "UNDERSTUDY_SCHEMATHESIS"

func schemathesis(t *testing.T) string {
	t.Helper()
	dir := os.Getenv(schemathesisEnv)
	if dir == "" {
		testenv.Missing(t, "$"+schemathesisEnv+" is not set: run scripts/schemathesis.sh and set it to the directory it prints")
	}
	bin := filepath.Join(dir, "bin", "schemathesis")
	if _, err := os.Stat(bin); err != nil {
		testenv.Missing(t, "schemathesis is not installed in $"+schemathesisEnv+": "+err.Error())
	}
	return bin
}

// TestOpenAPIFuzz runs schemathesis, a property-based fuzzer, against the live service
// from its own /openapi.json: generated requests, valid and invalid, to every operation,
// and every response must be no 5xx, of a documented status and content type, and match
// its schema. Requests that start jobs are generated too; whatever they started is
// cancelled and must end before the test does.
func TestOpenAPIFuzz(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	fuzzer := schemathesis(t)
	s := servicetest.New(t, bin, python)
	s.Token = rand.Text() + rand.Text() // the service refuses a weak token
	s.Start()

	// A job for the fuzzer to find: started and cancelled at once, so that status, events,
	// logs (a stream that ends at once), cancel and completed are fuzzed against a job
	// that exists, not only against unknown ones.
	const seeded = "fuzz-seeded"
	pairs := servicetest.WritePairs(t, 8)
	if code := s.Request("POST", "/api/v1/training/start", startBody(seeded, model, pairs, 8, nil), nil); code != 202 {
		t.Fatalf("start %s: %d", seeded, code)
	}
	if code := s.Request("POST", "/api/v1/training/"+seeded+"/cancel", nil, nil); code != 202 {
		t.Fatalf("cancel %s: %d", seeded, code)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for j := s.Job(seeded); !terminal(j); j = s.Job(seeded) {
		if time.Now().After(deadline) {
			t.Fatalf("job %s did not end after it was cancelled: %s", seeded, j.Status)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// Half the train_ids the fuzzer sends name that job, and half the start requests ask
	// for a provider this service has, so that they get past that check.
	config := filepath.Join(t.TempDir(), "schemathesis.toml")
	if err := os.WriteFile(config, []byte(`
[dictionaries]
jobs = { values = ["`+seeded+`"] }
providers = { values = ["local"] }

[parameters]
"path.train_id" = { dictionary = "jobs", probability = 0.5 }
"body.provider" = { dictionary = "providers", probability = 0.5 }
`), 0o600); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, fuzzer, "--config-file", config, "run", "http://"+s.Addr+"/openapi.json",
		"--header", "Authorization: Bearer "+s.Token,
		"--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,unsupported_method",
		"--phases", "examples,coverage,fuzzing",
		"--max-examples", "50",
		// A log stream of a job that runs would hold a request open until the job ends.
		"--request-timeout", "20",
		"--seed", "20240601",
		"--workers", "2",
		"--no-color")
	cmd.Dir = t.TempDir()
	// Keep schemathesis's own caches (hypothesis examples) out of the clone.
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("schemathesis:\n%s", out)
	if ctx.Err() != nil {
		t.Fatalf("schemathesis did not finish in time")
	}
	if err != nil {
		t.Errorf("schemathesis found responses that break the OpenAPI document or are server errors: %v", err)
	}
	cancelStarted(t, s)
}

// cancelStarted cancels every job the fuzzer started and waits until each is terminal.
func cancelStarted(t *testing.T, s *servicetest.Service) {
	t.Helper()
	var page struct {
		Jobs []servicetest.Job `json:"jobs"`
	}
	if code := s.Request("GET", "/api/v1/training?limit=500", nil, &page); code != 200 {
		t.Fatalf("list jobs: %d", code)
	}
	for _, j := range page.Jobs {
		if terminal(j) {
			continue
		}
		t.Logf("the fuzzer started job %s (%s): cancelling it", j.TrainID, j.Status)
		if code := s.Request("POST", "/api/v1/training/"+j.TrainID+"/cancel", nil, nil); code != 202 && code != 409 {
			t.Errorf("cancel %s: %d", j.TrainID, code)
		}
	}
	for _, j := range page.Jobs {
		deadline := time.Now().Add(2 * time.Minute)
		for cur := j; !terminal(cur); cur = s.Job(j.TrainID) {
			if time.Now().After(deadline) {
				t.Fatalf("job %s did not end after it was cancelled: %s", j.TrainID, cur.Status)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	t.Logf("the fuzzer started %d jobs", len(page.Jobs))
}
