// Package storetest is the conformance suite every store driver passes: drivers call Run
// from a one-line test with a function that opens an empty store.
package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/store"
)

// Opener returns a new, empty store; the suite closes it.
type Opener func(t *testing.T) store.Store

func newJob(id, endpoint string, created time.Time) *job.Job {
	return &job.Job{
		Spec: job.Spec{TrainID: id, EndpointID: endpoint, Version: 1, Provider: "local",
			SLMType: "m", SourceLLM: "s", TrainingPairsCount: 3, Fingerprint: "fp-" + id},
		Status:     job.StatusQueued,
		CreatedAt:  created,
		UpdatedAt:  created,
		Timestamps: map[job.Status]time.Time{job.StatusQueued: created},
	}
}

// Run runs the suite.
func Run(t *testing.T, open Opener) {
	ctx := context.Background()
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	t.Run("CreateGetRoundTrip", func(t *testing.T) {
		s := open(t)
		j := newJob("a1", "ep", base)
		loss := 1.25
		j.Progress.Loss = &loss
		j.Internal.ProgressOffset = 77
		j.Internal.Owner = "replica-1"
		j.Internal.Outcome = &job.Outcome{Status: job.StatusFailed, Failure: &job.Failure{Code: "x", Message: "y"}}
		j.Hyperparameters = &job.Hyperparameters{Epochs: ptr(3)}
		if err := s.JobCreate(ctx, j); err != nil {
			t.Fatal(err)
		}
		if j.Revision != 1 {
			t.Fatalf("revision = %d, want 1", j.Revision)
		}
		got, err := s.JobGet(ctx, "a1")
		if err != nil {
			t.Fatal(err)
		}
		if got.TrainID != "a1" || got.Status != job.StatusQueued || got.Revision != 1 ||
			got.Internal.ProgressOffset != 77 || got.Internal.Owner != "replica-1" || got.Internal.Outcome.Failure.Code != "x" || *got.Progress.Loss != 1.25 ||
			*got.Hyperparameters.Epochs != 3 || !got.CreatedAt.Equal(base) || !got.Timestamps[job.StatusQueued].Equal(base) {
			t.Fatalf("round trip lost data: %+v", got)
		}
	})

	t.Run("CreateDuplicate", func(t *testing.T) {
		s := open(t)
		if err := s.JobCreate(ctx, newJob("dup", "ep", base)); err != nil {
			t.Fatal(err)
		}
		err := s.JobCreate(ctx, newJob("dup", "ep", base))
		if job.CodeOf(err) != job.CodeAlreadyExists {
			t.Fatalf("duplicate create: %v, want AlreadyExists", err)
		}
	})

	t.Run("GetMissing", func(t *testing.T) {
		s := open(t)
		if _, err := s.JobGet(ctx, "nope"); job.CodeOf(err) != job.CodeNotFound {
			t.Fatalf("get missing: %v, want NotFound", err)
		}
	})

	t.Run("UpdateCompareAndSet", func(t *testing.T) {
		s := open(t)
		j := newJob("cas", "ep", base)
		if err := s.JobCreate(ctx, j); err != nil {
			t.Fatal(err)
		}
		stale := *j
		j.Status = job.StatusProvisioning
		if err := s.JobUpdate(ctx, j); err != nil {
			t.Fatal(err)
		}
		if j.Revision != 2 {
			t.Fatalf("revision = %d, want 2", j.Revision)
		}
		stale.Status = job.StatusCancelled
		err := s.JobUpdate(ctx, &stale)
		if job.CodeOf(err) != job.CodeFailedPrecondition || job.ReasonOf(err) != store.ReasonConflict {
			t.Fatalf("stale update: %v, want conflict", err)
		}
		got, _ := s.JobGet(ctx, "cas")
		if got.Status != job.StatusProvisioning {
			t.Fatalf("stale update was written: %s", got.Status)
		}
	})

	t.Run("UpdateForbiddenTransition", func(t *testing.T) {
		s := open(t)
		j := newJob("tr", "ep", base)
		if err := s.JobCreate(ctx, j); err != nil {
			t.Fatal(err)
		}
		j.Status = job.StatusCompleted
		err := s.JobUpdate(ctx, j)
		if job.ReasonOf(err) != "invalid_transition" {
			t.Fatalf("queued → completed: %v, want invalid_transition", err)
		}
		got, _ := s.JobGet(ctx, "tr")
		if got.Status != job.StatusQueued || got.Revision != 1 {
			t.Fatalf("forbidden transition was written: %+v", got)
		}
	})

	t.Run("UpdateMissing", func(t *testing.T) {
		s := open(t)
		j := newJob("ghost", "ep", base)
		j.Revision = 1
		if err := s.JobUpdate(ctx, j); job.CodeOf(err) != job.CodeNotFound {
			t.Fatalf("update missing: %v, want NotFound", err)
		}
	})

	t.Run("ConcurrentUpdatesOneWins", func(t *testing.T) {
		s := open(t)
		j := newJob("race", "ep", base)
		if err := s.JobCreate(ctx, j); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		wins := 0
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := *j
				c.Status = job.StatusProvisioning
				if err := s.JobUpdate(ctx, &c); err == nil {
					mu.Lock()
					wins++
					mu.Unlock()
				} else if job.ReasonOf(err) != store.ReasonConflict {
					t.Errorf("concurrent update: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins != 1 {
			t.Fatalf("%d concurrent writers won, want exactly 1", wins)
		}
	})

	t.Run("ListFiltersAndPages", func(t *testing.T) {
		s := open(t)
		for i := 0; i < 7; i++ {
			ep := "even"
			if i%2 == 1 {
				ep = "odd"
			}
			j := newJob(fmt.Sprintf("job-%d", i), ep, base.Add(time.Duration(i)*time.Second))
			if err := s.JobCreate(ctx, j); err != nil {
				t.Fatal(err)
			}
			if i == 3 {
				j.Status = job.StatusProvisioning
				if err := s.JobUpdate(ctx, j); err != nil {
					t.Fatal(err)
				}
			}
		}
		var ids []string
		cursor := ""
		pages := 0
		for {
			page, next, err := s.JobList(ctx, store.JobListParams{Limit: 3, Cursor: cursor})
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, j := range page {
				ids = append(ids, j.TrainID)
			}
			if next == "" {
				break
			}
			cursor = next
		}
		want := "job-6 job-5 job-4 job-3 job-2 job-1 job-0"
		if fmt.Sprint(ids) != "["+want+"]" || pages != 3 {
			t.Fatalf("paged list = %v in %d pages, want [%s] in 3", ids, pages, want)
		}
		odd, _, err := s.JobList(ctx, store.JobListParams{EndpointID: "odd"})
		if err != nil || len(odd) != 3 || odd[0].TrainID != "job-5" {
			t.Fatalf("endpoint filter = %v, %v", ids, err)
		}
		prov, _, err := s.JobList(ctx, store.JobListParams{Statuses: []job.Status{job.StatusProvisioning}})
		if err != nil || len(prov) != 1 || prov[0].TrainID != "job-3" {
			t.Fatalf("status filter = %v, %v", prov, err)
		}
		if _, _, err := s.JobList(ctx, store.JobListParams{Cursor: "!!bad"}); job.CodeOf(err) != job.CodeInvalidArgument {
			t.Fatalf("bad cursor: %v, want InvalidArgument", err)
		}
	})

	t.Run("Events", func(t *testing.T) {
		s := open(t)
		for i := 0; i < 3; i++ {
			e, err := s.EventAppend(ctx, job.Event{TrainID: "ev", Type: "status", Status: job.StatusQueued,
				Message: fmt.Sprintf("m%d", i), Data: map[string]any{"i": float64(i)}})
			if err != nil || e.ID == 0 {
				t.Fatalf("append event: %v %+v", err, e)
			}
		}
		if _, err := s.EventAppend(ctx, job.Event{TrainID: "other", Type: "x"}); err != nil {
			t.Fatal(err)
		}
		evs, err := s.EventList(ctx, "ev")
		if err != nil || len(evs) != 3 || evs[2].Message != "m2" || evs[1].Data["i"] != float64(1) || evs[0].Time.IsZero() {
			t.Fatalf("events = %+v, %v", evs, err)
		}
	})

	t.Run("Logs", func(t *testing.T) {
		s := open(t)
		last, err := s.LogAppend(ctx, "lg", []store.LogLine{{Stream: "service", Text: "a"}, {Stream: "progress", Text: "b"}})
		if err != nil || last != 2 {
			t.Fatalf("append = %d, %v", last, err)
		}
		last, err = s.LogAppend(ctx, "lg", []store.LogLine{{Stream: "stderr", Text: "c"}})
		if err != nil || last != 3 {
			t.Fatalf("append = %d, %v", last, err)
		}
		got, err := s.LogList(ctx, "lg", 1, 0)
		if err != nil || len(got) != 2 || got[0].Text != "b" || got[1].Seq != 3 || got[1].Stream != "stderr" {
			t.Fatalf("list = %+v, %v", got, err)
		}
		if got, _ := s.LogList(ctx, "other", 0, 0); len(got) != 0 {
			t.Fatalf("logs leak across jobs: %+v", got)
		}
	})

	// A runtime's stderr and error messages are not always clean text: a NUL byte or bytes
	// that are not UTF-8 must come back as they went in, not fail the write.
	t.Run("RawBytesInLogsAndEvents", func(t *testing.T) {
		s := open(t)
		raw := "nul\x00 bad\xff\xfe utf-8 é"
		if _, err := s.LogAppend(ctx, "raw", []store.LogLine{{Stream: "stderr", Text: raw}}); err != nil {
			t.Fatalf("append a log line with raw bytes: %v", err)
		}
		if got, err := s.LogList(ctx, "raw", 0, 0); err != nil || len(got) != 1 || got[0].Text != raw {
			t.Fatalf("log lines = %+v, %v; want one holding %q", got, err, raw)
		}
		if _, err := s.EventAppend(ctx, job.Event{TrainID: "raw", Type: "error", Message: raw}); err != nil {
			t.Fatalf("append an event with raw bytes: %v", err)
		}
		if evs, err := s.EventList(ctx, "raw"); err != nil || len(evs) != 1 || evs[0].Message != raw {
			t.Fatalf("events = %+v, %v; want the message %q", evs, err, raw)
		}
	})

	// Appends to one job's log from several goroutines (the log follower and the driver)
	// never reuse a sequence number.
	t.Run("ConcurrentLogAppends", func(t *testing.T) {
		s := open(t)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := range 8 {
			wg.Go(func() {
				for k := range 5 {
					if _, err := s.LogAppend(ctx, "many", []store.LogLine{{Stream: "service", Text: fmt.Sprintf("%d-%d", i, k)}, {Stream: "service", Text: "x"}}); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("concurrent append: %v", err)
		}
		got, err := s.LogList(ctx, "many", 0, 0)
		if err != nil || len(got) != 80 {
			t.Fatalf("lines = %d, %v; want 80", len(got), err)
		}
		for i, l := range got {
			if l.Seq != int64(i+1) {
				t.Fatalf("line %d has seq %d", i, l.Seq)
			}
		}
	})

	t.Run("RevokedSessions", func(t *testing.T) {
		s := open(t)
		now := time.Now()
		if r, err := s.SessionRevoked(ctx, "a"); err != nil || r {
			t.Fatalf("a session never signed out: %v, %v", r, err)
		}
		if err := s.SessionRevoke(ctx, "a", now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if r, err := s.SessionRevoked(ctx, "a"); err != nil || !r {
			t.Fatalf("signed out: %v, %v", r, err)
		}
		if r, _ := s.SessionRevoked(ctx, "b"); r {
			t.Fatal("another session counts as signed out")
		}
		// Signing out twice keeps the later expiry.
		if err := s.SessionRevoke(ctx, "a", now.Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
		if r, _ := s.SessionRevoked(ctx, "a"); !r {
			t.Fatal("a second sign-out with an earlier expiry undid the first")
		}
		// A session past its expiry is no longer reported (its cookie is refused anyway).
		if err := s.SessionRevoke(ctx, "old", now.Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		if r, _ := s.SessionRevoked(ctx, "old"); r {
			t.Fatal("an expired session is still listed")
		}
	})
}

func ptr[T any](v T) *T { return &v }
