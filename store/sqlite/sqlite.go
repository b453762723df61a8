// Package sqlite is the default store driver: one SQLite file, pure Go (no cgo), WAL mode.
// It suits one service instance; several replicas share a PostgreSQL store instead.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/store"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is a store.Store on one SQLite file.
type Store struct {
	db *sql.DB
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the database at path and applies migrations.
func Open(ctx context.Context, path string) (*Store, error) {
	dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	// One writer at a time is SQLite's rule anyway; a small pool keeps readers concurrent.
	db.SetMaxOpenConns(4)
	s := &Store{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY)`); err != nil {
		return fmt.Errorf("migrate store: %w", err)
	}
	entries, err := migrations.ReadDir("migrations")
	if err != nil {
		return fmt.Errorf("migrate store: %w", err)
	}
	for _, e := range entries {
		var n int
		if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE name = ?`, e.Name()).Scan(&n); err != nil {
			return fmt.Errorf("migrate store: %w", err)
		}
		if n > 0 {
			continue
		}
		body, err := migrations.ReadFile("migrations/" + e.Name())
		if err != nil {
			return fmt.Errorf("migrate store: %w", err)
		}
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migrate store: %w", err)
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate store %s: %w", e.Name(), err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (name) VALUES (?)`, e.Name()); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate store: %w", err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migrate store: %w", err)
		}
	}
	return nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// SessionRevoke records the signed-out session and forgets those past their expiry.
func (s *Store) SessionRevoke(ctx context.Context, id string, expires time.Time) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return job.Wrap(job.CodeUnavailable, err, "revoke session")
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM revoked_sessions WHERE expires_at <= ?`, time.Now().UnixNano()); err != nil {
		return job.Wrap(job.CodeUnavailable, err, "revoke session")
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO revoked_sessions (id, expires_at) VALUES (?, ?)
		ON CONFLICT (id) DO UPDATE SET expires_at = MAX(expires_at, excluded.expires_at)`, id, expires.UnixNano()); err != nil {
		return job.Wrap(job.CodeUnavailable, err, "revoke session")
	}
	if err := tx.Commit(); err != nil {
		return job.Wrap(job.CodeUnavailable, err, "revoke session")
	}
	return nil
}

func (s *Store) SessionRevoked(ctx context.Context, id string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM revoked_sessions WHERE id = ? AND expires_at > ?`,
		id, time.Now().UnixNano()).Scan(&n)
	if err != nil {
		return false, job.Wrap(job.CodeUnavailable, err, "look up session")
	}
	return n > 0, nil
}

func (s *Store) JobCreate(ctx context.Context, j *job.Job) error {
	j.Revision = 1
	data, err := store.EncodeJob(j)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx,
		`INSERT INTO jobs (train_id, endpoint_id, status, created_at, revision, data) VALUES (?, ?, ?, ?, ?, ?)`,
		j.TrainID, j.EndpointID, string(j.Status), j.CreatedAt.UnixNano(), j.Revision, data)
	if err != nil {
		j.Revision = 0
		if strings.Contains(err.Error(), "UNIQUE constraint") || strings.Contains(err.Error(), "PRIMARY KEY") {
			return store.AlreadyExists(j.TrainID)
		}
		return job.Wrap(job.CodeUnavailable, err, "create job")
	}
	return nil
}

func (s *Store) JobGet(ctx context.Context, trainID string) (*job.Job, error) {
	row := s.db.QueryRowContext(ctx, `SELECT revision, data FROM jobs WHERE train_id = ?`, trainID)
	j, err := scanJob(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.NotFound(trainID)
	}
	return j, err
}

type scanner interface{ Scan(...any) error }

func scanJob(row scanner) (*job.Job, error) {
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
	if len(p.Statuses) > 0 {
		ph := make([]string, len(p.Statuses))
		for i, st := range p.Statuses {
			ph[i] = "?"
			args = append(args, string(st))
		}
		where = append(where, "status IN ("+strings.Join(ph, ",")+")")
	}
	if p.EndpointID != "" {
		where = append(where, "endpoint_id = ?")
		args = append(args, p.EndpointID)
	}
	if p.Cursor != "" {
		ts, id, err := store.DecodeCursor(p.Cursor)
		if err != nil {
			return nil, "", err
		}
		where = append(where, "(created_at < ? OR (created_at = ? AND train_id < ?))")
		args = append(args, ts, ts, id)
	}
	q := `SELECT revision, data FROM jobs`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY created_at DESC, train_id DESC LIMIT ?"
	args = append(args, limit+1)
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
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return job.Wrap(job.CodeUnavailable, err, "update job")
	}
	defer tx.Rollback()
	var rev int64
	var status string
	err = tx.QueryRowContext(ctx, `SELECT revision, status FROM jobs WHERE train_id = ?`, j.TrainID).Scan(&rev, &status)
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
	data, err := store.EncodeJob(j)
	if err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, `UPDATE jobs SET status = ?, revision = ?, data = ? WHERE train_id = ? AND revision = ?`,
		string(j.Status), rev+1, data, j.TrainID, rev)
	if err != nil {
		return job.Wrap(job.CodeUnavailable, err, "update job")
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return store.Conflict(j.TrainID)
	}
	if err := tx.Commit(); err != nil {
		return job.Wrap(job.CodeUnavailable, err, "update job")
	}
	j.Revision = rev + 1
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
	res, err := s.db.ExecContext(ctx, `INSERT INTO events (train_id, time, type, status, message, data) VALUES (?, ?, ?, ?, ?, ?)`,
		e.TrainID, e.Time.UnixNano(), e.Type, string(e.Status), e.Message, data)
	if err != nil {
		return e, job.Wrap(job.CodeUnavailable, err, "append event")
	}
	e.ID, _ = res.LastInsertId()
	return e, nil
}

func (s *Store) EventList(ctx context.Context, trainID string) ([]job.Event, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, time, type, status, message, data FROM events WHERE train_id = ? ORDER BY id`, trainID)
	if err != nil {
		return nil, job.Wrap(job.CodeUnavailable, err, "list events")
	}
	defer rows.Close()
	var out []job.Event
	for rows.Next() {
		var e job.Event
		var ts int64
		var status string
		var data []byte
		if err := rows.Scan(&e.ID, &ts, &e.Type, &status, &e.Message, &data); err != nil {
			return nil, job.Wrap(job.CodeUnavailable, err, "list events")
		}
		e.TrainID = trainID
		e.Time = time.Unix(0, ts).UTC()
		e.Status = job.Status(status)
		if len(data) > 0 && string(data) != "null" {
			if err := json.Unmarshal(data, &e.Data); err != nil {
				return nil, job.Wrap(job.CodeInternal, err, "decode event")
			}
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func (s *Store) LogAppend(ctx context.Context, trainID string, lines []store.LogLine) (int64, error) {
	if len(lines) == 0 {
		return 0, nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, job.Wrap(job.CodeUnavailable, err, "append log")
	}
	defer tx.Rollback()
	var last int64
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM logs WHERE train_id = ?`, trainID).Scan(&last); err != nil {
		return 0, job.Wrap(job.CodeUnavailable, err, "append log")
	}
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO logs (train_id, seq, time, stream, text) VALUES (?, ?, ?, ?, ?)`)
	if err != nil {
		return 0, job.Wrap(job.CodeUnavailable, err, "append log")
	}
	defer stmt.Close()
	for _, l := range lines {
		last++
		ts := l.Time
		if ts.IsZero() {
			ts = time.Now().UTC()
		}
		if _, err := stmt.ExecContext(ctx, trainID, last, ts.UnixNano(), l.Stream, l.Text); err != nil {
			return 0, job.Wrap(job.CodeUnavailable, err, "append log")
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, job.Wrap(job.CodeUnavailable, err, "append log")
	}
	return last, nil
}

func (s *Store) LogList(ctx context.Context, trainID string, after int64, limit int) ([]store.LogLine, error) {
	if limit <= 0 || limit > 10000 {
		limit = 10000
	}
	rows, err := s.db.QueryContext(ctx, `SELECT seq, time, stream, text FROM logs WHERE train_id = ? AND seq > ? ORDER BY seq LIMIT ?`, trainID, after, limit)
	if err != nil {
		return nil, job.Wrap(job.CodeUnavailable, err, "list log")
	}
	defer rows.Close()
	var out []store.LogLine
	for rows.Next() {
		var l store.LogLine
		var ts int64
		if err := rows.Scan(&l.Seq, &ts, &l.Stream, &l.Text); err != nil {
			return nil, job.Wrap(job.CodeUnavailable, err, "list log")
		}
		l.Time = time.Unix(0, ts).UTC()
		out = append(out, l)
	}
	return out, rows.Err()
}
