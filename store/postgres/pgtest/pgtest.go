// Package pgtest runs a throwaway PostgreSQL server for tests: the real server, from the
// postgresql Debian package (`make deps` installs it), in a temporary directory, stopped and
// removed by Stop. Clients authenticate with a password (SCRAM) that a password file holds,
// as the service's own deployments do.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// User is the superuser of the test server.
const User = "understudy"

// Server is a running PostgreSQL server.
type Server struct {
	Host string
	Port int
	// PassFile is a password file (PGPASSFILE) that holds User's password.
	PassFile string

	dir  string
	cmd  *exec.Cmd
	exit chan error
	next atomic.Int64
}

// binDir finds the server's binaries: on PATH, else in Debian's versioned directory.
func binDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(real), nil
		}
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Strings(dirs)
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i], nil
		}
	}
	return "", errors.New("PostgreSQL server binaries (initdb, postgres) not found: install the postgresql package (`make deps` does)")
}

// Start initialises a cluster in a new temporary directory and starts the server on a free
// loopback port. As root, the server runs as the "postgres" user (it refuses root).
func Start(ctx context.Context) (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "understudy-pgtest-")
	if err != nil {
		return nil, err
	}
	s := &Server{Host: "127.0.0.1", dir: dir, PassFile: filepath.Join(dir, "pgpass")}
	fail := func(err error) (*Server, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fail(fmt.Errorf("running as root, the server needs the postgres user (the postgresql package makes it): %w", err))
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return fail(err)
		}
	}
	password := strconv.FormatInt(time.Now().UnixNano(), 36) + "-pgtest"
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		return fail(err)
	}
	if cred != nil {
		os.Chown(pwFile, int(cred.Uid), int(cred.Gid))
	}
	data := filepath.Join(dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", User, "--pwfile", pwFile,
		"--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("initdb: %w\n%s", err, out))
	}
	os.Remove(pwFile)
	// The password file is read by clients (this process, as whichever user).
	if err := os.WriteFile(s.PassFile, []byte("*:*:*:"+User+":"+password+"\n"), 0o600); err != nil {
		return fail(err)
	}
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return fail(err)
		}
		s.Port = port
		s.cmd = exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-k", dir,
			"-c", "listen_addresses=127.0.0.1", "-p", strconv.Itoa(port),
			"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
			"-c", "max_connections=200")
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
		logf, err := os.Create(filepath.Join(dir, "server.log"))
		if err != nil {
			return fail(err)
		}
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
		if err := s.cmd.Start(); err != nil {
			logf.Close()
			return fail(fmt.Errorf("start postgres: %w", err))
		}
		logf.Close()
		s.exit = make(chan error, 1)
		go func(c *exec.Cmd, exit chan error) { exit <- c.Wait() }(s.cmd, s.exit)
		err = s.waitReady(ctx)
		if err == nil {
			return s, nil
		}
		s.stopServer()
		if attempt == 2 {
			log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
			return fail(fmt.Errorf("postgres did not start: %w\n%s", err, log))
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := s.connect(ctx, "postgres")
		if err == nil {
			c.Close(ctx)
			return nil
		}
		select {
		case werr := <-s.exit:
			s.exit <- werr
			return fmt.Errorf("server exited: %v", werr)
		default:
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *Server) connect(ctx context.Context, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(s.url(db))
	if err != nil {
		return nil, err
	}
	pw, err := os.ReadFile(s.PassFile)
	if err != nil {
		return nil, err
	}
	// The file's one line is *:*:*:user:password.
	cfg.Password = string(pw[len("*:*:*:"+User+":") : len(pw)-1])
	return pgx.ConnectConfig(ctx, cfg)
}

func (s *Server) url(db string) string {
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", User, s.Host, s.Port, db)
}

// NewDatabase creates an empty database and returns its URL (without the password, which
// PassFile holds).
func (s *Server) NewDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("t%d_%d", os.Getpid(), s.next.Add(1))
	c, err := s.connect(ctx, "postgres")
	if err != nil {
		return "", err
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	return s.url(name), nil
}

// Exec runs one statement in database db (as the superuser), such as ending a session.
func (s *Server) Exec(ctx context.Context, db, sql string, args ...any) error {
	c, err := s.connect(ctx, db)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, sql, args...)
	return err
}

func (s *Server) stopServer() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	// SIGINT is PostgreSQL's fast shutdown: sessions end, the server exits.
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exit:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exit
	}
}

// Stop stops the server (and its processes) and removes its directory.
func (s *Server) Stop() {
	s.stopServer()
	os.RemoveAll(s.dir)
}
