package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/emulators"
	"github.com/understudy-ai/training-service/internal/servicetest"
	"github.com/understudy-ai/training-service/storage"
)

// With an S3-compatible store (the moto emulator) as the weights store, the dataset's home
// and the Pulumi state backend, a local job runs end to end: the operator's `pulumi stack ls`
// against the bucket shows the job's stack while it runs and not after, and the weights in
// the bucket match their manifest.
func TestObjectStoreForWeightsDatasetAndState(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	s3 := emulators.StartS3(t)
	s3.Setenv(t) // this process writes the dataset and reads the weights back
	weightsBucket, stateBucket, dataBucket := s3.NewBucket(t), s3.NewBucket(t), s3.NewBucket(t)

	ctx := context.Background()
	data, err := storage.Open(ctx, s3.BucketURL(dataBucket))
	if err != nil {
		t.Fatal(err)
	}
	defer data.Close()
	raw, err := os.ReadFile(servicetest.WritePairs(t, 48))
	if err != nil {
		t.Fatal(err)
	}
	if err := data.WriteAll(ctx, "sets/pairs.jsonl", raw, nil); err != nil {
		t.Fatal(err)
	}

	s := servicetest.New(t, bin, python)
	s.Env = append(s.Env, s3.Env()...)
	s.Args = append(s.Args, "--weights-url", s3.BucketURL(weightsBucket))
	s.DatasetRoots = append(s.DatasetRoots, s3.ObjectURL(dataBucket, "sets"))
	s.BackendURL = s3.BucketURL(stateBucket)
	s.Start()

	const id = "e2e-s3"
	body := startBody(id, model, "", 48, map[string]any{"epochs": 6, "max_seq_len": 64, "batch_size": 4})
	body["dataset_uri"] = s3.ObjectURL(dataBucket, "sets/pairs.jsonl")
	var out map[string]any
	if code := s.Request("POST", "/api/v1/training/start", body, &out); code != 202 {
		t.Fatalf("start: %d %v", code, out)
	}
	s.WaitFor(id, 5*time.Minute, "training", func(j servicetest.Job) bool { return j.Status == "training" || terminal(j) })
	lsCtx, cancel := context.WithTimeout(ctx, time.Minute)
	ls := s.PulumiStackLs(lsCtx)
	cancel()
	if !strings.Contains(ls, `"`+id+`"`) {
		t.Errorf("pulumi stack ls against the bucket does not show the running job's stack:\n%s", ls)
	}

	j := s.WaitFor(id, 5*time.Minute, "a terminal status", terminal)
	if j.Status != "completed" {
		t.Fatalf("job ended %s: %+v", j.Status, j.Error)
	}
	prefix := "ep-e2e/v1/" + id + "/"
	if want := "s3://" + weightsBucket + "/" + prefix; j.WeightsURI != want {
		t.Fatalf("weights_uri = %q, want %q", j.WeightsURI, want)
	}
	weights, err := storage.Open(ctx, s3.BucketURL(weightsBucket))
	if err != nil {
		t.Fatal(err)
	}
	defer weights.Close()
	assertStoredFiles(t, func(p string) ([]byte, error) { return weights.ReadAll(ctx, prefix+p) }, j.Manifest.Files)
	assertTornDown(t, s, id)
}

// An operator clears a stuck job's stack from an object-store backend with `make
// destroy-stack` and the service's environment: the Makefile finds the bucket through
// PULUMI_BACKEND_URL, the machine goes away, and the restarted service ends the job at once.
func TestMakeDestroyStackUsesTheObjectStoreBackend(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	s3 := emulators.StartS3(t)
	s := servicetest.New(t, bin, python)
	s.Env = append(s.Env, s3.Env()...)
	s.BackendURL = s3.BucketURL(s3.NewBucket(t))
	s.Start()
	const id = "e2e-s3-stuck"
	body := startBody(id, model, servicetest.WritePairs(t, 400), 400, map[string]any{"epochs": 100, "max_seq_len": 64, "batch_size": 4})
	if code := s.Request("POST", "/api/v1/training/start", body, nil); code != 202 {
		t.Fatalf("start: %d", code)
	}
	s.WaitFor(id, 5*time.Minute, "training steps", func(j servicetest.Job) bool {
		return j.Status == "training" && j.Progress.Step >= 1
	})
	s.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := s.MakeDestroyStack(ctx, id); err != nil {
		t.Fatalf("make destroy-stack: %v\n%s", err, out)
	}
	if ls := s.PulumiStackLs(ctx); strings.Contains(ls, `"`+id+`"`) {
		t.Fatalf("the bucket still holds the stack:\n%s", ls)
	}
	if pids := s.Processes(); len(pids) > 0 {
		t.Fatalf("the job's worker processes still run: %v", pids)
	}
	s.Start()
	j := s.WaitFor(id, 2*time.Minute, "a terminal status", terminal)
	if j.Status != "failed" || j.Error == nil || j.Error.Code != "machine_lost" {
		t.Fatalf("job ended %s with %+v, want failed with machine_lost", j.Status, j.Error)
	}
	assertTornDown(t, s, id)
}
