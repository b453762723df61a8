package fakecloud

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/provider/sshd"
)

// TagName is the environment variable that every process of a machine's SSH sessions
// carries, set to the machine's directory; ending the machine ends those processes.
const TagName = "UNDERSTUDY_FAKE_MACHINE"

// tick is how often a machine's goroutine looks at its state when nothing wakes it.
const tick = 100 * time.Millisecond

// teardownTimeout bounds stopping one machine's sshd and session processes.
const teardownTimeout = 30 * time.Second

// phase is where a machine is in its life, whatever the provider calls it.
type phase int

const (
	phaseBooting    phase = iota // RunPod PROVISIONING/STARTING, Lambda booting
	phaseRunning                 // RunPod RUNNING, Lambda active
	phaseStopped                 // powered off: RunPod EXITED, Lambda unhealthy
	phaseFailed                  // sshd would not start: RunPod ERROR, Lambda unhealthy
	phaseTerminated              // gone from the provider
)

// lease holds the settings of a machine's dead-man's switch, as its boot script reads them.
type lease struct {
	File     string // UNDERSTUDY_LEASE_FILE: its mtime is the last renewal
	Seconds  int64  // UNDERSTUDY_LEASE_SECONDS: 0 = no lease
	Deadline int64  // UNDERSTUDY_DEADLINE: unix seconds, 0 = none
}

// expired reports why a machine running since since powers itself off at now, or "".
func (l lease) expired(now, since time.Time) string {
	if l.Deadline > 0 && now.Unix() >= l.Deadline {
		return "deadline reached"
	}
	if l.Seconds <= 0 {
		return ""
	}
	renewed := since
	if l.File != "" {
		if st, err := os.Stat(l.File); err == nil {
			renewed = st.ModTime()
		}
	}
	if now.Sub(renewed) >= time.Duration(l.Seconds)*time.Second { // as watchdog.sh compares
		return "lease expired"
	}
	return ""
}

// machine is one rented machine. The fields above the line are fixed at create; the rest
// are guarded by Server.mu and changed by handlers (what the provider shows) and by the
// machine's own goroutine (what runs).
type machine struct {
	id, name      string
	dir           string
	files         sshd.Files
	tag           string
	listen        string // the sshd's listen address
	fixedPort     int    // the sshd's port; 0 = a free one
	interruptible bool
	hostKey       string // injected host key (PEM); empty = generated at each boot
	authorized    []string
	lease         lease
	createdAt     time.Time
	pod           *pod      // RunPod only
	inst          *instance // Lambda only
	wake          chan struct{}

	phase          phase
	gen            int // bumped on every change of phase made from outside the goroutine
	bootStart      time.Time
	runningAt      time.Time
	nextLeaseCheck time.Time
	stoppedReason  string
	deleteAt       time.Time // when the machine is torn down; zero = not asked
	goneAt         time.Time // when it left the provider's listings; zero = still there
	sshdUp         bool
	pid, port      int
	removing       bool // remove runs (in a handler or the machine's goroutine)
	removed        bool
}

// newMachine makes the machine's directory under the server's machines dir.
func (s *Server) newMachine(id, name string) (*machine, error) {
	dir := filepath.Join(s.machines, id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create machine dir: %w", err)
	}
	now := time.Now()
	return &machine{
		id: id, name: name, dir: dir, files: sshd.FilesOf(dir),
		tag: TagName + "=" + dir, listen: "127.0.0.1", createdAt: now,
		wake: make(chan struct{}, 1), phase: phaseBooting, bootStart: now,
	}, nil
}

// start registers m and starts its goroutine; it fails once Close has begun.
func (s *Server) start(m *machine) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = os.RemoveAll(m.dir)
		return errors.New("start machine: fake is closing")
	}
	s.byID[m.id] = m
	s.order = append(s.order, m)
	s.stats.Creates++
	s.wg.Add(1)
	go s.run(m)
	s.log.Info("create machine", "machine", m.id, "name", m.name, "interruptible", m.interruptible,
		"host_key_injected", m.hostKey != "", "authorized_keys", len(m.authorized))
	return nil
}

// poke wakes m's goroutine after a handler changed m.
func (m *machine) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

type actionKind int

const (
	actNone   actionKind = iota
	actStart             // start the sshd
	actKill              // stop the sshd and the session processes, keep the dir
	actRemove            // stop everything and remove the dir
	actExit              // the machine is gone: end the goroutine
)

// run is a machine's goroutine: it makes the processes match the state the handlers set.
func (s *Server) run(m *machine) {
	defer s.wg.Done()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		kind, gen := s.next(m, time.Now())
		switch kind {
		case actExit:
			return
		case actStart:
			s.startSSHD(m, gen)
			continue
		case actKill:
			s.kill(m)
			continue
		case actRemove:
			s.remove(m)
			continue
		}
		select {
		case <-t.C:
		case <-m.wake:
		case <-s.closing:
		}
	}
}

// next decides, under the lock, what m's goroutine does now. Changes of state that happen
// by themselves (preemption, the lease, slow deletion ending) are made here.
func (s *Server) next(m *machine, now time.Time) (actionKind, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.removed {
		return actExit, 0
	}
	if m.removing {
		return actNone, 0
	}
	if s.closed || (!m.deleteAt.IsZero() && !now.Before(m.deleteAt)) {
		// The machine leaves the API only once remove has ended its processes: a cloud
		// that says a machine is gone has stopped it.
		return actRemove, 0
	}
	switch m.phase {
	case phaseBooting:
		if m.sshdUp {
			return actKill, 0 // a restart: the old sshd goes first
		}
		if !now.Before(m.bootStart.Add(s.cfg.BootDelay)) {
			return actStart, m.gen
		}
	case phaseRunning:
		return s.checkRunning(m, now), 0
	default:
		if m.sshdUp {
			return actKill, 0
		}
	}
	return actNone, 0
}

// checkRunning applies preemption and the machine's dead-man's switch to a running m.
func (s *Server) checkRunning(m *machine, now time.Time) actionKind {
	if s.preemptible(m) && !(s.cfg.Faults.PreemptOnce && s.preemptions > 0) && !now.Before(m.runningAt.Add(s.cfg.Faults.PreemptAfter)) {
		s.preemptions++
		m.gen++
		m.stoppedReason = "preempted"
		s.log.Info("preempt machine", "machine", m.id)
		if s.cfg.Provider == Lambda {
			m.deleteAt = now
			return actRemove
		}
		m.phase = phaseStopped
		return actKill
	}
	if now.Before(m.nextLeaseCheck) {
		return actNone
	}
	m.nextLeaseCheck = now.Add(time.Second)
	if reason := m.lease.expired(now, m.runningAt); reason != "" {
		m.gen++
		m.phase, m.stoppedReason = phaseStopped, reason
		s.log.Info("power off machine", "machine", m.id, "reason", reason)
		return actKill
	}
	return actNone
}

func (s *Server) preemptible(m *machine) bool {
	return s.cfg.Faults.PreemptAfter > 0 && (m.interruptible || s.cfg.Provider == Lambda)
}

// startSSHD starts m's sshd; m becomes running unless its state changed meanwhile (gen).
func (s *Server) startSSHD(m *machine, gen int) {
	pid, port, err := s.bootSSHD(m)
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.log.Error("start sshd", "machine", m.id, "err", err)
		if m.gen == gen && m.phase == phaseBooting {
			m.gen++
			m.phase, m.stoppedReason = phaseFailed, "sshd did not start"
		}
		return
	}
	m.sshdUp, m.pid, m.port = true, pid, port
	if m.gen == gen && m.phase == phaseBooting {
		m.phase, m.runningAt, m.nextLeaseCheck = phaseRunning, now, now.Add(time.Second)
		s.log.Info("run machine", "machine", m.id, "listen", m.listen, "port", port)
	}
}

// bootSSHD writes m's sshd files afresh and starts it, as the machine's image would at
// boot: the injected host key or a new one, and the authorized keys from the request.
func (s *Server) bootSSHD(m *machine) (pid, port int, err error) {
	hostKey := m.hostKey
	if hostKey == "" {
		if hostKey, err = newHostKey(); err != nil {
			return 0, 0, err
		}
	}
	for _, name := range []string{m.files.HostKey, m.files.AuthorizedKeys} {
		if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, 0, fmt.Errorf("remove old sshd file: %w", err)
		}
	}
	pid, port, err = sshd.Start(s.ctx, m.files, sshd.Config{
		SSHDPath:       s.cfg.SSHDPath,
		HostPrivateKey: hostKey,
		AuthorizedKeys: m.authorized,
		Tag:            m.tag,
		Comment:        "understudy-fakecloud machine " + m.id,
		ListenAddress:  m.listen,
		Port:           m.fixedPort,
	})
	if err != nil {
		ctx, cancel := s.teardownContext()
		defer cancel()
		return 0, 0, errors.Join(err, sshd.Stop(ctx, m.files, pid))
	}
	return pid, port, nil
}

// kill powers m off: its sshd and every process of its sessions end; its dir stays.
func (s *Server) kill(m *machine) {
	s.mu.Lock()
	pid := m.pid
	s.mu.Unlock()
	ctx, cancel := s.teardownContext()
	defer cancel()
	err := errors.Join(sshd.Stop(ctx, m.files, pid), sshd.KillTagged(ctx, m.tag))
	if err != nil {
		s.log.Error("power off machine", "machine", m.id, "err", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m.sshdUp, m.pid, m.port = false, 0, 0
}

// remove tears m down for good: sshd, session processes and directory. The machine
// leaves the API only when that is done. Of concurrent calls, one does the work.
func (s *Server) remove(m *machine) {
	s.mu.Lock()
	if m.removing || m.removed {
		s.mu.Unlock()
		return
	}
	m.removing = true
	pid := m.pid
	s.mu.Unlock()
	ctx, cancel := s.teardownContext()
	defer cancel()
	err := sshd.Remove(ctx, m.files, pid, m.tag)
	s.mu.Lock()
	defer s.mu.Unlock()
	m.sshdUp, m.pid, m.port, m.removed = false, 0, 0, true
	m.phase = phaseTerminated
	if m.goneAt.IsZero() {
		m.goneAt = time.Now()
	}
	if err != nil {
		s.log.Error("remove machine", "machine", m.id, "err", err)
		s.teardownErrs = append(s.teardownErrs, fmt.Errorf("remove machine %s: %w", m.id, err))
		return
	}
	s.log.Info("remove machine", "machine", m.id)
}

func (s *Server) teardownContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(s.ctx), teardownTimeout)
}

// terminate asks for m's teardown: at once, or after Config.SlowDelete under that fault,
// during which m stays up and visible. The caller holds s.mu.
func (s *Server) terminate(m *machine, now time.Time) {
	if !m.deleteAt.IsZero() {
		return
	}
	m.gen++
	m.deleteAt = now
	if s.cfg.Faults.SlowDelete {
		m.deleteAt = now.Add(s.cfg.SlowDelete)
	}
	m.poke()
}

// newHostKey generates an ed25519 host key as an OpenSSH PEM private key.
func newHostKey() (string, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("generate host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return "", fmt.Errorf("encode host key: %w", err)
	}
	return string(pem.EncodeToMemory(block)), nil
}

// checkHostKey returns pemText when it is an OpenSSH PEM ed25519 private key.
func checkHostKey(pemText string) (string, error) {
	signer, err := ssh.ParsePrivateKey([]byte(pemText))
	if err != nil {
		return "", fmt.Errorf("parse host key: %w", err)
	}
	if t := signer.PublicKey().Type(); t != ssh.KeyAlgoED25519 {
		return "", fmt.Errorf("parse host key: type %s, want %s", t, ssh.KeyAlgoED25519)
	}
	return pemText, nil
}

// keyLines returns the non-empty lines of text, trimmed.
func keyLines(text string) []string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			out = append(out, line)
		}
	}
	return out
}
