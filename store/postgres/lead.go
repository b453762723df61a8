package postgres

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/understudy-ai/training-service/job"
)

// How often a standby asks for the lead, and a leader checks that it still holds it.
const (
	DefaultLeadPoll  = 2 * time.Second
	DefaultLeadCheck = 2 * time.Second
)

// LeadOptions tunes Lead; zero values mean the defaults.
type LeadOptions struct {
	// Holder names this replica in the leader row and in logs; URL is where it serves the
	// API, for standbys to pass requests on to ("" when it cannot be reached from them).
	Holder, URL string
	// Waiting, when set, is called at every try while another replica leads, with the
	// leader's URL ("" when it gave none, or the store does not answer).
	Waiting func(leaderURL string)
	// Poll is how often a standby tries to take the lead; Check how often the leader checks
	// that it still holds it.
	Poll, Check time.Duration
	Logger      *slog.Logger
}

// Lease is this replica's lead. Lost is closed when it ends without Release: the lead's
// connection failed or its lock was taken away (pg_terminate_backend). From then on every
// write of the store fails with reason "not_leader", and the replica must stop driving
// jobs — without tearing anything down: the successor resumes them.
type Lease struct {
	Epoch int64

	s           *Store
	conn        *pgx.Conn
	lost        chan struct{}
	stop        chan struct{}
	done        chan struct{}
	loseOnce    sync.Once
	releaseOnce sync.Once
}

// Lead blocks until this replica leads: it holds a session-level advisory lock on a
// connection of its own, and has moved the leader row to the next epoch, or ctx ends.
// While another replica leads it waits, trying again every Poll. One replica leads at a
// time; the lead passes when the leader's connection ends (its process exits or dies,
// or the database ends its session).
func (s *Store) Lead(ctx context.Context, o LeadOptions) (*Lease, error) {
	if o.Poll <= 0 {
		o.Poll = DefaultLeadPoll
	}
	if o.Check <= 0 {
		o.Check = DefaultLeadCheck
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var conn *pgx.Conn
	closeConn := func() {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
			conn = nil
		}
	}
	waiting := false
	for {
		// A standby rides out the database's restarts and failovers: it reconnects and
		// keeps waiting.
		var got bool
		var err error
		if conn == nil {
			cfg := s.connConfig.Copy()
			// If the leader's host or its network dies, the server must notice, end the
			// session and free the lock: with TCP's defaults that takes two hours. These
			// make it about 15 s (probes from 5 s idle, every 2 s, 3 lost; unacknowledged
			// data for 10 s). They are a session's settings, which any user may make.
			for k, v := range map[string]string{"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
				"tcp_keepalives_count": "3", "tcp_user_timeout": "10000"} {
				if _, ok := cfg.RuntimeParams[k]; !ok {
					cfg.RuntimeParams[k] = v
				}
			}
			conn, err = pgx.ConnectConfig(ctx, cfg)
		}
		if err == nil {
			err = conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, int64(leadLockKey)).Scan(&got)
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("standing by: the job store does not answer; trying again", "err", err)
			closeConn()
		}
		if got {
			break
		}
		var holder, url string
		if err == nil {
			var since time.Time
			_ = conn.QueryRow(ctx, `SELECT holder, url, since FROM leader WHERE id = 1`).Scan(&holder, &url, &since)
			if !waiting {
				log.Info("standing by: another replica leads", "leader", holder, "leader_url", url, "since", since)
				waiting = true
			}
		}
		if o.Waiting != nil {
			o.Waiting(url)
		}
		select {
		case <-ctx.Done():
			closeConn()
			return nil, job.Wrap(job.CodeCanceled, ctx.Err(), "lead")
		case <-time.After(o.Poll):
		}
	}
	var epoch int64
	err := conn.QueryRow(ctx, `UPDATE leader SET epoch = epoch + 1, holder = $1, url = $2, since = now() WHERE id = 1 RETURNING epoch`,
		o.Holder, o.URL).Scan(&epoch)
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, job.Wrap(job.CodeUnavailable, err, "lead: take the leader row")
	}
	s.epoch.Store(epoch)
	s.lost.Store(false)
	l := &Lease{Epoch: epoch, s: s, conn: conn, lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	log.Info("leading", "epoch", epoch, "holder", o.Holder)
	go l.watch(o.Check, log)
	return l, nil
}

// Lost is closed when the lead ends without Release.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// watch checks every interval that the lock is still this session's.
func (l *Lease) watch(every time.Duration, log *slog.Logger) {
	defer close(l.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), max(every, 5*time.Second))
		var held bool
		err := l.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
			AND pid = pg_backend_pid() AND granted AND ((classid::bigint << 32) | objid::bigint) = $1)`,
			int64(leadLockKey)).Scan(&held)
		cancel()
		if err == nil && held {
			continue
		}
		if err == nil {
			err = errors.New("the advisory lock is no longer held")
		}
		log.Error("lost the lead", "epoch", l.Epoch, "err", err)
		l.lose()
		return
	}
}

func (l *Lease) lose() {
	l.loseOnce.Do(func() {
		l.s.lost.Store(true)
		close(l.lost)
	})
}

// Release gives the lead up: the store stops writing (as after a loss) and the lock's
// connection closes, so that a standby takes over at its next try.
func (l *Lease) Release() {
	l.releaseOnce.Do(func() {
		l.s.lost.Store(true)
		close(l.stop)
		<-l.done
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.conn.Close(ctx)
	})
}
