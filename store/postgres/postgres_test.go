package postgres_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/store"
	"github.com/understudy-ai/training-service/store/postgres"
	"github.com/understudy-ai/training-service/store/postgres/pgtest"
	"github.com/understudy-ai/training-service/store/storetest"
)

var srv *pgtest.Server

// TestMain runs one real PostgreSQL server for the package; each test gets databases of
// its own. A machine without the server binaries fails here, loudly.
func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	s, err := pgtest.Start(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: cannot start PostgreSQL for the store tests:", err)
		os.Exit(1)
	}
	srv = s
	os.Setenv("PGPASSFILE", srv.PassFile)
	code := m.Run()
	srv.Stop()
	os.Exit(code)
}

func newDB(t *testing.T) string {
	t.Helper()
	u, err := srv.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func openURL(t *testing.T, u string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openURL(t, newDB(t)) })
}

func TestURLs(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"postgres://svc:hunter2@db:5432/jobs", "carries a password"},
		{"postgresql://svc@db/jobs?password=hunter2", "carries password"},
		{"postgres://svc@db/jobs?passfile=/etc/x", "carries passfile"},
		{"mysql://svc@db/jobs", "want postgres://"},
		{"postgres://svc@db/jobs?sslmode=sometimes", "store URL"},
	} {
		_, err := postgres.ParseURL(tc.url)
		if job.CodeOf(err) != job.CodeInvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want InvalidArgument naming %q", tc.url, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: the error shows the password: %v", tc.url, err)
		}
	}
	if _, err := postgres.ParseURL("postgres://svc@db:5432/jobs?sslmode=verify-full"); err != nil {
		t.Errorf("a URL without a password: %v", err)
	}
}

// A server that does not answer fails Open with Unavailable, naming the database.
func TestOpenUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := postgres.Open(ctx, "postgres://svc@127.0.0.1:1/jobs?sslmode=disable&connect_timeout=2")
	if job.CodeOf(err) != job.CodeUnavailable || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("open = %v, want Unavailable naming the address", err)
	}
}

// Servers older than 12 are refused, naming their version; the test server (15) and
// later ones are taken (Open against the real server is every other test here).
func TestServerVersion(t *testing.T) {
	for num, want := range map[int]string{
		90624:  "PostgreSQL 9.6 is too old",
		110022: "PostgreSQL 11 is too old",
		120000: "",
		150010: "",
		180001: "",
	} {
		err := postgres.CheckVersion(num)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "12 or newer")) {
			t.Errorf("server_version_num %d: %v, want %q", num, err, want)
		}
	}
}

// Replicas starting together migrate one after another; none fails.
func TestConcurrentMigrations(t *testing.T) {
	u := newDB(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			s, err := postgres.Open(context.Background(), u)
			if err != nil {
				errs <- err
				return
			}
			s.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent open: %v", err)
	}
}

func newJob(id string) *job.Job {
	now := time.Now().UTC()
	return &job.Job{Spec: job.Spec{TrainID: id, EndpointID: "e", Version: 1}, Status: job.StatusQueued, CreatedAt: now, UpdatedAt: now}
}

func lead(t *testing.T, s *postgres.Store, holder string, check time.Duration) *postgres.Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := s.Lead(ctx, postgres.LeadOptions{Holder: holder, Poll: 100 * time.Millisecond, Check: check})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Release)
	return l
}

// One replica leads at a time; the next takes over when the first lets go, at the next
// epoch, and the first can no longer write.
func TestLeadOneAtATime(t *testing.T) {
	u := newDB(t)
	a, b := openURL(t, u), openURL(t, u)
	la := lead(t, a, "a", time.Second)
	if err := a.JobCreate(context.Background(), newJob("j1")); err != nil {
		t.Fatalf("the leader cannot write: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err := b.Lead(ctx, postgres.LeadOptions{Holder: "b", Poll: 100 * time.Millisecond})
	cancel()
	if job.CodeOf(err) != job.CodeCanceled {
		t.Fatalf("a second replica led while the first did: %v", err)
	}
	la.Release()
	lb := lead(t, b, "b", time.Second)
	if lb.Epoch != la.Epoch+1 {
		t.Fatalf("epochs %d then %d, want consecutive", la.Epoch, lb.Epoch)
	}
	if err := a.JobCreate(context.Background(), newJob("j2")); !isNotLeader(err) {
		t.Fatalf("a replica that let go wrote: %v", err)
	}
	j, err := b.JobGet(context.Background(), "j1")
	if err != nil {
		t.Fatal(err)
	}
	j.Status = job.StatusProvisioning
	if err := b.JobUpdate(context.Background(), j); err != nil {
		t.Fatalf("the new leader cannot write: %v", err)
	}
}

func isNotLeader(err error) bool {
	return job.CodeOf(err) == job.CodeUnavailable && job.ReasonOf(err) == postgres.ReasonNotLeader
}

// The database ends the leader's lock session: the leader notices (Lost), stops writing,
// and a standby takes over.
func TestLeadLostWhenItsSessionEnds(t *testing.T) {
	u := newDB(t)
	a, b := openURL(t, u), openURL(t, u)
	la := lead(t, a, "a", 100*time.Millisecond)
	terminateLeader(t, u)
	select {
	case <-la.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("the leader did not notice that its lock was gone")
	}
	if err := a.JobCreate(context.Background(), newJob("late")); !isNotLeader(err) {
		t.Fatalf("a replica that lost the lead wrote: %v", err)
	}
	lead(t, b, "b", time.Second)
	if err := b.JobCreate(context.Background(), newJob("new")); err != nil {
		t.Fatalf("the successor cannot write: %v", err)
	}
}

// Even before a leader notices that it lost the lead, the epoch keeps it from writing once
// a successor has taken over: the fence is in the database, not in the leader's memory.
func TestStaleLeaderIsFenced(t *testing.T) {
	u := newDB(t)
	a, b := openURL(t, u), openURL(t, u)
	if err := a.JobCreate(context.Background(), newJob("j")); err != nil {
		t.Fatal(err)
	}
	lead(t, a, "a", time.Hour) // never checks
	j, err := a.JobGet(context.Background(), "j")
	if err != nil {
		t.Fatal(err)
	}
	terminateLeader(t, u)
	lead(t, b, "b", time.Second)
	j.Status = job.StatusProvisioning
	if err := a.JobUpdate(context.Background(), j); !isNotLeader(err) {
		t.Fatalf("a stale leader updated a job: %v", err)
	}
	if _, err := a.EventAppend(context.Background(), job.Event{TrainID: "j", Type: "x"}); !isNotLeader(err) {
		t.Fatalf("a stale leader appended an event: %v", err)
	}
	if _, err := a.LogAppend(context.Background(), "j", []store.LogLine{{Stream: "service", Text: "x"}}); !isNotLeader(err) {
		t.Fatalf("a stale leader appended to a log: %v", err)
	}
	got, err := b.JobGet(context.Background(), "j")
	if err != nil || got.Status != job.StatusQueued || got.Revision != 1 {
		t.Fatalf("the job after a fenced write: %+v, %v", got, err)
	}
}

// terminateLeader ends the database session that holds the lead's lock, as an
// administrator or a failed network path would.
func terminateLeader(t *testing.T, u string) {
	t.Helper()
	db := u[strings.LastIndex(u, "/")+1 : strings.Index(u, "?")]
	err := srv.Exec(context.Background(), db, `SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND granted`)
	if err != nil {
		t.Fatal(err)
	}
}

// A standby rides out the loss of its own database session: it reconnects, keeps waiting,
// and leads once the leader lets go.
func TestStandbyReconnects(t *testing.T) {
	u := newDB(t)
	a, b := openURL(t, u), openURL(t, u)
	la := lead(t, a, "a", time.Second)
	got := make(chan *postgres.Lease, 1)
	errc := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		l, err := b.Lead(ctx, postgres.LeadOptions{Holder: "b", Poll: 100 * time.Millisecond})
		if err != nil {
			errc <- err
			return
		}
		got <- l
	}()
	time.Sleep(500 * time.Millisecond) // b is waiting
	db := u[strings.LastIndex(u, "/")+1 : strings.Index(u, "?")]
	if err := srv.Exec(context.Background(), db, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()
		AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-errc:
		t.Fatalf("the standby gave up when its session ended: %v", err)
	case <-got:
		t.Fatal("the standby led while the leader held the lead")
	default:
	}
	la.Release()
	select {
	case err := <-errc:
		t.Fatalf("the standby did not lead: %v", err)
	case lb := <-got:
		defer lb.Release()
		if lb.Epoch != la.Epoch+1 {
			t.Fatalf("epochs %d then %d", la.Epoch, lb.Epoch)
		}
	}
}

// A wrong password fails Open with Unavailable, naming the store and the cause, not the
// password.
func TestOpenWrongPassword(t *testing.T) {
	u := newDB(t)
	t.Setenv("PGPASSWORD", "not-the-password")
	_, err := postgres.Open(context.Background(), u)
	if job.CodeOf(err) != job.CodeUnavailable || !strings.Contains(err.Error(), "password authentication failed") ||
		!strings.Contains(err.Error(), "127.0.0.1") || strings.Contains(err.Error(), "not-the-password") {
		t.Fatalf("open with a wrong password = %v", err)
	}
}

// The lead's session asks the server to notice a dead peer in seconds, so that the lock of
// a leader whose host died is freed for a standby (TCP's defaults would take two hours).
func TestLeadSessionNoticesADeadPeerQuickly(t *testing.T) {
	l := lead(t, openURL(t, newDB(t)), "a", time.Second)
	for name, want := range map[string]string{"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
		"tcp_keepalives_count": "3", "tcp_user_timeout": "10000"} {
		got, err := l.Setting(context.Background(), name)
		if err != nil || got != want {
			t.Errorf("%s = %q, %v; want %s", name, got, err, want)
		}
	}
}
