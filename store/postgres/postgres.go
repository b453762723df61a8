// Package postgres is the store driver for a PostgreSQL database, which several replicas of
// the service can share: one of them leads (drives the jobs and serves the API) and the
// others stand by to take over (lead.go).
package postgres

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Advisory lock keys (per database): one for migrations, one for the lead.
const (
	migrateLockKey = 0x756e6465727374 // "underst"
	leadLockKey    = 0x756e646572736c // "underst" + 1: "understl"
)

// Store is a store.Store on a PostgreSQL database.
type Store struct {
	db *sql.DB
	// connConfig dials the lead's own connection (lead.go).
	connConfig *pgx.ConnConfig
	// epoch is the lead's epoch while this store leads (0: it never led); lost is set once
	// the lead is lost. Writes check both (write).
	epoch atomic.Int64
	lost  atomic.Bool
}

var _ store.Store = (*Store)(nil)

// IsURL says whether rawURL names a PostgreSQL database.
func IsURL(rawURL string) bool {
	return strings.HasPrefix(rawURL, "postgres://") || strings.HasPrefix(rawURL, "postgresql://")
}

// ParseURL checks a postgres:// URL and returns its connection settings. The URL must not
// carry a password: it comes from $PGPASSWORD or a password file ($PGPASSFILE, else
// ~/.pgpass), as libpq's do.
func ParseURL(rawURL string) (*pgx.ConnConfig, error) {
	bad := func(format string, args ...any) error {
		return job.WithReason(job.Errorf(job.CodeInvalidArgument, format, args...), job.CodeInvalidArgument, "invalid_store_url")
	}
	if !IsURL(rawURL) {
		return nil, bad("store URL %q: want postgres://user@host:port/database", redact(rawURL))
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, bad("store URL %q: %v", redact(rawURL), errors.Unwrap(err))
	}
	if _, ok := u.User.Password(); ok {
		return nil, bad("store URL %s carries a password: put it in $PGPASSWORD or a password file ($PGPASSFILE) instead", redact(rawURL))
	}
	for k := range u.Query() {
		if strings.EqualFold(k, "password") || strings.EqualFold(k, "passfile") {
			return nil, bad("store URL %s carries %s: put the password in $PGPASSWORD or a password file ($PGPASSFILE) instead", redact(rawURL), k)
		}
	}
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		return nil, bad("store URL %s: %v", redact(rawURL), err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	return cfg, nil
}

// redact hides a URL's password and query, for messages.
func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	u.RawQuery = ""
	return u.Redacted()
}

// Open connects to the database at rawURL (see ParseURL), checks that it answers and
// applies migrations; replicas opening at once migrate one after another.
func Open(ctx context.Context, rawURL string) (*Store, error) {
	cfg, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	db := stdlib.OpenDB(*cfg.Copy())
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, job.Wrap(job.CodeUnavailable, err, "open store %s", redact(rawURL))
	}
	var version int
	if err := db.QueryRowContext(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		db.Close()
		return nil, job.Wrap(job.CodeUnavailable, err, "open store %s", redact(rawURL))
	}
	if err := checkVersion(version); err != nil {
		db.Close()
		return nil, job.Wrap(job.CodeFailedPrecondition, err, "open store %s", redact(rawURL))
	}
	s := &Store{db: db, connConfig: cfg}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// minVersion is the oldest PostgreSQL the store runs on (server_version_num): 12, as the
// operations guide promises (the log append's lock needs 11's hashtextextended).
const minVersion = 120000

// checkVersion refuses a server older than minVersion, naming both.
func checkVersion(num int) error {
	if num >= minVersion {
		return nil
	}
	major := num / 10000
	if num < 100000 { // before 10: major.minor
		return fmt.Errorf("PostgreSQL %d.%d is too old: the job store needs 12 or newer", major, num/100%100)
	}
	return fmt.Errorf("PostgreSQL %d is too old: the job store needs 12 or newer", major)
}

func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return job.Wrap(job.CodeUnavailable, err, "migrate store")
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrateLockKey)); err != nil {
		return job.Wrap(job.CodeUnavailable, err, "migrate store")
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY)`); err != nil {
		return job.Wrap(job.CodeUnavailable, err, "migrate store")
	}
	entries, err := migrations.ReadDir("migrations")
	if err != nil {
		return fmt.Errorf("migrate store: %w", err)
	}
	for _, e := range entries {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE name = $1`, e.Name()).Scan(&n); err != nil {
			return job.Wrap(job.CodeUnavailable, err, "migrate store")
		}
		if n > 0 {
			continue
		}
		body, err := migrations.ReadFile("migrations/" + e.Name())
		if err != nil {
			return fmt.Errorf("migrate store: %w", err)
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			return job.Wrap(job.CodeUnavailable, err, "migrate store: %s", e.Name())
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (name) VALUES ($1)`, e.Name()); err != nil {
			return job.Wrap(job.CodeUnavailable, err, "migrate store")
		}
	}
	if err := tx.Commit(); err != nil {
		return job.Wrap(job.CodeUnavailable, err, "migrate store")
	}
	return nil
}

// Close closes the database connections (a lead's own connection is closed by its Release).
func (s *Store) Close() error { return s.db.Close() }

// write runs fn in a transaction that, once this store has led, first checks that it still
// leads: a replica that lost the lead gets a job.CodeUnavailable error with reason
// "not_leader" and writes nothing. The check holds the leader row (FOR SHARE) until commit,
// so a successor's takeover waits for writes under the old epoch to end and none commits
// after it.
func (s *Store) write(ctx context.Context, what string, fn func(tx *sql.Tx) error) error {
	if err := s.fenced(); err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return job.Wrap(job.CodeUnavailable, err, "%s", what)
	}
	defer tx.Rollback()
	if mine := s.epoch.Load(); mine != 0 {
		var cur int64
		if err := tx.QueryRowContext(ctx, `SELECT epoch FROM leader WHERE id = 1 FOR SHARE`).Scan(&cur); err != nil {
			return job.Wrap(job.CodeUnavailable, err, "%s", what)
		}
		if cur != mine {
			s.lost.Store(true)
			return notLeader()
		}
	}
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return job.Wrap(job.CodeUnavailable, err, "%s", what)
	}
	return nil
}

func (s *Store) fenced() error {
	if s.lost.Load() {
		return notLeader()
	}
	return nil
}

// ReasonNotLeader is the reason of a write refused because this replica no longer leads.
const ReasonNotLeader = "not_leader"

func notLeader() error {
	return &job.Error{Code: job.CodeUnavailable, Reason: ReasonNotLeader,
		Message: "this replica no longer leads the job store: its lead ended, and another replica may have taken over"}
}

// SessionRevoke records the signed-out session and forgets those past their expiry.
func (s *Store) SessionRevoke(ctx context.Context, id string, expires time.Time) error {
	return s.write(ctx, "revoke session", func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM revoked_sessions WHERE expires_at <= $1`, time.Now().UnixNano()); err != nil {
			return job.Wrap(job.CodeUnavailable, err, "revoke session")
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO revoked_sessions (id, expires_at) VALUES ($1, $2)
			ON CONFLICT (id) DO UPDATE SET expires_at = GREATEST(revoked_sessions.expires_at, excluded.expires_at)`,
			id, expires.UnixNano()); err != nil {
			return job.Wrap(job.CodeUnavailable, err, "revoke session")
		}
		return nil
	})
}

func (s *Store) SessionRevoked(ctx context.Context, id string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM revoked_sessions WHERE id = $1 AND expires_at > $2`,
		id, time.Now().UnixNano()).Scan(&n)
	if err != nil {
		return false, job.Wrap(job.CodeUnavailable, err, "look up session")
	}
	return n > 0, nil
}

func (s *Store) JobCreate(ctx context.Context, j *job.Job) error {
	data, err := store.EncodeJob(j)
	if err != nil {
		return err
	}
	err = s.write(ctx, "create job", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx,
			`INSERT INTO jobs (train_id, endpoint_id, status, created_at, revision, data) VALUES ($1, $2, $3, $4, 1, $5)`,
			j.TrainID, j.EndpointID, string(j.Status), j.CreatedAt.UnixNano(), data)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23505" { // unique_violation
			return store.AlreadyExists(j.TrainID)
		}
		if err != nil {
			return job.Wrap(job.CodeUnavailable, err, "create job")
		}
		return nil
	})
	if err != nil {
		return err
	}
	j.Revision = 1
	return nil
}

func (s *Store) JobGet(ctx context.Context, trainID string) (*job.Job, error) {
	row := s.db.QueryRowContext(ctx, `SELECT revision, data FROM jobs WHERE train_id = $1`, trainID)
	j, err := scanJob(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.NotFound(trainID)
	}
	return j, err
}

func scanJob(row interface{ Scan(...any) error }) (*job.Job, error) {
	var rev int64
	var data []byte
	if err := row.Scan(&rev, &data); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
		return nil, job.Wrap(job.CodeUnavailable, err, "read job")
	}
	return store.DecodeJob(data, rev)
}

func (s *Store) JobList(ctx context.Context, p store.JobListParams) ([]*job.Job, string, error) {
	limit := store.PageLimit(p.Limit)
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if len(p.Statuses) > 0 {
		ss := make([]string, len(p.Statuses))
		for i, st := range p.Statuses {
			ss[i] = string(st)
		}
		where = append(where, "status = ANY("+arg(ss)+")")
	}
	if p.EndpointID != "" {
		where = append(where, "endpoint_id = "+arg(p.EndpointID))
	}
	if p.Cursor != "" {
		ts, id, err := store.DecodeCursor(p.Cursor)
		if err != nil {
			return nil, "", err
		}
		// COLLATE "C": train_ids compare bytewise, as the page order below.
		t, i := arg(ts), arg(id)
		where = append(where, "(created_at < "+t+" OR (created_at = "+t+` AND train_id COLLATE "C" < `+i+"))")
	}
	q := `SELECT revision, data FROM jobs`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	// Byte order of train_ids, as SQLite's, whatever the database's collation.
	q += ` ORDER BY created_at DESC, train_id COLLATE "C" DESC LIMIT ` + arg(limit+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, "", job.Wrap(job.CodeUnavailable, err, "list jobs")
	}
	defer rows.Close()
	var out []*job.Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, "", err
		}
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, "", job.Wrap(job.CodeUnavailable, err, "list jobs")
	}
	out, next := store.Page(out, limit)
	return out, next, nil
}

func (s *Store) JobUpdate(ctx context.Context, j *job.Job) error {
	data, err := store.EncodeJob(j)
	if err != nil {
		return err
	}
	var next int64
	err = s.write(ctx, "update job", func(tx *sql.Tx) error {
		var rev int64
		var status string
		err := tx.QueryRowContext(ctx, `SELECT revision, status FROM jobs WHERE train_id = $1 FOR UPDATE`, j.TrainID).Scan(&rev, &status)
		if errors.Is(err, sql.ErrNoRows) {
			return store.NotFound(j.TrainID)
		}
		if err != nil {
			return job.Wrap(job.CodeUnavailable, err, "update job")
		}
		if rev != j.Revision {
			return store.Conflict(j.TrainID)
		}
		if from := job.Status(status); from != j.Status {
			if err := job.CheckTransition(from, j.Status); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE jobs SET status = $1, revision = $2, data = $3 WHERE train_id = $4`,
			string(j.Status), rev+1, data, j.TrainID); err != nil {
			return job.Wrap(job.CodeUnavailable, err, "update job")
		}
		next = rev + 1
		return nil
	})
	if err != nil {
		return err
	}
	j.Revision = next
	return nil
}

func (s *Store) EventAppend(ctx context.Context, e job.Event) (job.Event, error) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	data, err := json.Marshal(e.Data)
	if err != nil {
		return e, fmt.Errorf("encode event: %w", err)
	}
	err = s.write(ctx, "append event", func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `INSERT INTO events (train_id, time, type, status, message, data) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
			e.TrainID, e.Time.UnixNano(), e.Type, string(e.Status), []byte(e.Message), data).Scan(&e.ID)
		if err != nil {
			return job.Wrap(job.CodeUnavailable, err, "append event")
		}
		return nil
	})
	return e, err
}

func (s *Store) EventList(ctx context.Context, trainID string) ([]job.Event, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, time, type, status, message, data FROM events WHERE train_id = $1 ORDER BY id`, trainID)
	if err != nil {
		return nil, job.Wrap(job.CodeUnavailable, err, "list events")
	}
	defer rows.Close()
	var out []job.Event
	for rows.Next() {
		var e job.Event
		var ts int64
		var status string
		var msg, data []byte
		if err := rows.Scan(&e.ID, &ts, &e.Type, &status, &msg, &data); err != nil {
			return nil, job.Wrap(job.CodeUnavailable, err, "list events")
		}
		e.TrainID = trainID
		e.Time = time.Unix(0, ts).UTC()
		e.Status = job.Status(status)
		e.Message = string(msg)
		if len(data) > 0 && string(data) != "null" {
			if err := json.Unmarshal(data, &e.Data); err != nil {
				return nil, job.Wrap(job.CodeInternal, err, "decode event")
			}
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, job.Wrap(job.CodeUnavailable, err, "list events")
	}
	return out, nil
}

func (s *Store) LogAppend(ctx context.Context, trainID string, lines []store.LogLine) (int64, error) {
	if len(lines) == 0 {
		return 0, nil
	}
	var last int64
	err := s.write(ctx, "append log", func(tx *sql.Tx) error {
		// Appends to one job's log take turns (the lock ends with the transaction).
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, "log:"+trainID); err != nil {
			return job.Wrap(job.CodeUnavailable, err, "append log")
		}
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM logs WHERE train_id = $1`, trainID).Scan(&last); err != nil {
			return job.Wrap(job.CodeUnavailable, err, "append log")
		}
		seqs := make([]int64, len(lines))
		times := make([]int64, len(lines))
		streams := make([]string, len(lines))
		texts := make([][]byte, len(lines))
		for i, l := range lines {
			seqs[i] = last + int64(i) + 1
			ts := l.Time
			if ts.IsZero() {
				ts = time.Now().UTC()
			}
			times[i] = ts.UnixNano()
			streams[i] = l.Stream
			texts[i] = []byte(l.Text)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO logs (train_id, seq, time, stream, text)
			SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::bytea[])`,
			trainID, seqs, times, streams, texts); err != nil {
			return job.Wrap(job.CodeUnavailable, err, "append log")
		}
		last += int64(len(lines))
		return nil
	})
	if err != nil {
		return 0, err
	}
	return last, nil
}

func (s *Store) LogList(ctx context.Context, trainID string, after int64, limit int) ([]store.LogLine, error) {
	if limit <= 0 || limit > 10000 {
		limit = 10000
	}
	rows, err := s.db.QueryContext(ctx, `SELECT seq, time, stream, text FROM logs WHERE train_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`, trainID, after, limit)
	if err != nil {
		return nil, job.Wrap(job.CodeUnavailable, err, "list log")
	}
	defer rows.Close()
	var out []store.LogLine
	for rows.Next() {
		var l store.LogLine
		var ts int64
		var text []byte
		if err := rows.Scan(&l.Seq, &ts, &l.Stream, &text); err != nil {
			return nil, job.Wrap(job.CodeUnavailable, err, "list log")
		}
		l.Time = time.Unix(0, ts).UTC()
		l.Text = string(text)
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, job.Wrap(job.CodeUnavailable, err, "list log")
	}
	return out, nil
}
