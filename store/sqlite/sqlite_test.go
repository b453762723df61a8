package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/store"
	"github.com/understudy-ai/training-service/store/sqlite"
	"github.com/understudy-ai/training-service/store/storetest"
)

func open(t *testing.T) store.Store {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "jobs.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) { storetest.Run(t, open) }

func TestSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "jobs.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	j := &job.Job{Spec: job.Spec{TrainID: "keep", EndpointID: "e", Version: 1}, Status: job.StatusQueued}
	if err := s.JobCreate(ctx, j); err != nil {
		t.Fatal(err)
	}
	j.Status = job.StatusProvisioning
	if err := s.JobUpdate(ctx, j); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.JobGet(ctx, "keep")
	if err != nil || got.Status != job.StatusProvisioning || got.Revision != 2 {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
}
