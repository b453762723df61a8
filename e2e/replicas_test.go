package e2e

import (
	"context"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/servicetest"
	"github.com/understudy-ai/training-service/store/postgres/pgtest"
)

// sharedStore starts a real PostgreSQL server for the test and returns a new database's
// URL, its password file and a way to end the sessions holding the lead's lock.
func sharedStore(t *testing.T) (url, passFile string, endLeadSessions func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := pgtest.Start(ctx)
	if err != nil {
		t.Fatalf("cannot start PostgreSQL for the replica test: %v", err)
	}
	t.Cleanup(srv.Stop)
	url, err = srv.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	db := url[strings.LastIndex(url, "/")+1 : strings.Index(url, "?")]
	return url, srv.PassFile, func() {
		// As an administrator, or a network path that failed, would.
		if err := srv.Exec(context.Background(), db, `SELECT pg_terminate_backend(pid) FROM pg_locks
			WHERE locktype = 'advisory' AND granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`); err != nil {
			t.Fatal(err)
		}
	}
}

// Two replicas on one PostgreSQL store, sharing the data dir: one leads, the other stands
// by and passes the API on to the leader. When the leader goes mid-training — it loses
// its database session, or it crashes — the standby takes over the job, on the same
// machine, to the end. A leader that lost its session stops at once, without tearing
// anything down, and exits non-zero.
func TestStandbyTakesOver(t *testing.T) {
	for _, how := range []string{"lost-session", "crash"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			standbyTakesOver(t, how)
		})
	}
}

func standbyTakesOver(t *testing.T, how string) {
	bin, python, model := servicetest.Prerequisites(t)
	url, passFile, endLeadSessions := sharedStore(t)
	a := servicetest.New(t, bin, python)
	a.Env = append(a.Env, "PGPASSFILE="+passFile)
	a.Args = append(a.Args, "--store-url", url)
	a.Start()
	b := a.Replica()
	b.StartStandby()

	// The standby passes the API on to the leader: its readiness is the leader's, and a
	// job started through it runs on the leader.
	b.WaitReady(30 * time.Second)
	// A standby asked to stop, stops at once.
	c := a.Replica()
	c.StartStandby()
	pid, _ := c.Running()
	syscall.Kill(pid, syscall.SIGTERM)
	if code, log := c.WaitExit(30 * time.Second); code != 0 {
		t.Fatalf("a standby stopped with %d:\n%s", code, log)
	}

	id := "replica-takeover-" + how
	dataset := servicetest.WritePairs(t, 200)
	if code := b.Request("POST", "/api/v1/training/start", startBody(id, model, dataset, 200,
		map[string]any{"epochs": 4, "max_seq_len": 64, "batch_size": 4}), nil); code != 202 {
		t.Fatalf("start: %d", code)
	}
	before := b.WaitFor(id, 5*time.Minute, "training steps", func(j servicetest.Job) bool {
		return j.Status == "training" && j.Progress.Step >= 1
	})
	if j := a.Job(id); j.Status != "training" {
		t.Fatalf("the job started through the standby is %s on the leader", j.Status)
	}
	if how == "crash" {
		a.Kill()
	} else {
		endLeadSessions()
		code, log := a.WaitExit(90 * time.Second)
		if code == 0 || !strings.Contains(log, "lost the lead") {
			t.Fatalf("the replica that lost the lead exited %d; log:\n%s", code, log)
		}
		if strings.Contains(log, "destroying") || strings.Contains(log, "tearing down") && !strings.Contains(log, "without tearing anything down") {
			t.Errorf("the replica that lost the lead tore something down:\n%s", log)
		}
	}
	// The standby's own process names the shared data dir too: the machine's are the rest.
	standby, _ := b.Running()
	if machine := slices.DeleteFunc(a.Processes(), func(pid int) bool { return pid == standby }); len(machine) == 0 {
		t.Fatal("the job's machine died with the leader")
	}
	b.WaitReady(90 * time.Second)
	j := b.WaitFor(id, 5*time.Minute, "a terminal status", terminal)
	if j.Status != "completed" || j.Progress.Step < before.Progress.Step {
		t.Fatalf("after the takeover: %s %+v (progress %+v)", j.Status, j.Error, j.Progress)
	}
	if j.Machine.InstanceID != before.Machine.InstanceID {
		t.Fatalf("a new machine was made: %s vs %s", j.Machine.InstanceID, before.Machine.InstanceID)
	}
	var events struct {
		Events []struct{ Type string } `json:"events"`
	}
	b.Request("GET", "/api/v1/training/"+id+"/events", nil, &events)
	resumed := false
	for _, e := range events.Events {
		resumed = resumed || e.Type == "resumed"
	}
	if !resumed {
		t.Errorf("no resumed event: %+v", events)
	}
	assertTornDown(t, b, id)
}
