package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/sshrunner"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/store/sqlite"
)

// fakeProvisioner stands in for the stacks layer so that failures can be injected; the
// real one is exercised by the end-to-end tests.
type fakeProvisioner struct {
	mu            sync.Mutex
	stacks        map[string]bool
	teardownFails int // fail this many Teardown calls first
	provisionErr  error
	provisionWait chan struct{} // when set, Provision blocks until closed or ctx ends
	provisioned   int
	teardowns     int
	// provisionPanics makes Provision panic after creating the stack, as a bug would.
	provisionPanics bool
	// teardownHold blocks Teardown until closed or ctx ends; teardownsHeld counts the
	// Teardown calls that reached it.
	teardownHold  chan struct{}
	teardownsHeld int
	// health is what Inspect reports; nil means a running machine.
	health   *MachineHealth
	inspects int
	checkErr error
	// lastReq is the last request Provision got.
	lastReq MachineRequest
	// leaseFile is reported in the machine of every provisioned job.
	leaseFile string
	// preemptFirst makes Inspect report the first machine preempted once a second has not
	// been provisioned yet.
	preemptFirst bool
}

func (p *fakeProvisioner) ResourceIDs(ctx context.Context) (map[string]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := map[string]string{}
	for s := range p.stacks {
		ids["fake-"+s] = s
	}
	return ids, nil
}

func (p *fakeProvisioner) Check(req MachineRequest) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.checkErr
}

func (p *fakeProvisioner) Inspect(ctx context.Context, trainID, provider string) (MachineHealth, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inspects++
	if !p.stacks[trainID] {
		return MachineHealth{}, job.Errorf(job.CodeNotFound, "no stack")
	}
	if p.health != nil {
		return *p.health, nil
	}
	if p.preemptFirst && p.provisioned == 1 {
		return MachineHealth{Exists: true, Preempted: true, Status: "EXITED"}, nil
	}
	return MachineHealth{Exists: true, Running: true, Status: "RUNNING"}, nil
}

func newFakeProvisioner() *fakeProvisioner { return &fakeProvisioner{stacks: map[string]bool{}} }

func (p *fakeProvisioner) Provision(ctx context.Context, req MachineRequest, log func(string)) (job.Machine, error) {
	p.mu.Lock()
	p.stacks[req.TrainID] = true
	p.provisioned++
	n := p.provisioned
	p.lastReq = req
	lease := p.leaseFile
	wait, perr, boom := p.provisionWait, p.provisionErr, p.provisionPanics
	p.mu.Unlock()
	log("creating fake machine")
	if boom {
		panic("bug in a provisioner")
	}
	if wait != nil {
		select {
		case <-wait:
		case <-ctx.Done():
			return job.Machine{}, ctx.Err()
		}
	}
	if perr != nil {
		return job.Machine{}, perr
	}
	if req.AuthorizedKey == "" || !strings.Contains(req.HostPrivateKey, "OPENSSH PRIVATE KEY") {
		return job.Machine{}, errors.New("keys missing")
	}
	id := "fake-" + req.TrainID
	if n > 1 {
		id = fmt.Sprintf("%s-%d", id, n)
	}
	return job.Machine{InstanceID: id, Host: "127.0.0.1", Port: 22, User: "u", HostKey: "k", WorkDir: "/w/" + req.TrainID,
		HourlyPriceUSD: 3.6, LeaseFile: lease}, nil
}

func (p *fakeProvisioner) Machine(ctx context.Context, trainID string) (job.Machine, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stacks[trainID] {
		return job.Machine{}, job.Errorf(job.CodeNotFound, "no stack")
	}
	return job.Machine{InstanceID: "fake-" + trainID, Host: "127.0.0.1", Port: 22, WorkDir: "/w/" + trainID}, nil
}

func (p *fakeProvisioner) Teardown(ctx context.Context, trainID string, log func(string)) error {
	p.mu.Lock()
	hold := p.teardownHold
	if hold != nil {
		p.teardownsHeld++
	}
	p.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.teardowns++
	if p.teardownFails > 0 {
		p.teardownFails--
		return job.Errorf(job.CodeUnavailable, "engine unavailable")
	}
	delete(p.stacks, trainID)
	return nil
}

func (p *fakeProvisioner) Stacks(ctx context.Context) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for s := range p.stacks {
		out = append(out, s)
	}
	return out, nil
}

func (p *fakeProvisioner) has(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stacks[id]
}

// fakeConnector hands out sessions whose "runtime" replays a script of progress lines.
type fakeConnector struct {
	mu       sync.Mutex
	lines    []string
	exitCode int
	// hold blocks Follow after the first line until closed, to test cancellation.
	hold     chan struct{}
	uploaded map[string]bool
	started  int
	dropOnce bool // the first Follow fails as a dropped connection after one line
	// dropAt is the line after which dropOnce drops (default the first); with
	// dropAfterDownload the drop waits until a Download happened (a checkpoint copied).
	dropAt            int
	dropAfterDownload bool
	// secondLines, when set, are the runtime's lines once a second run was started (on a
	// replacement machine).
	// downloadHold blocks Download until closed or ctx ends.
	downloadHold chan struct{}
	downloads    int
	commands     []string
	// dropForever makes every Follow fail as a dropped connection and every Connect after
	// the first fail, as a machine that went away would.
	dropForever bool
	connects    int
	// mismatchFirst makes that many first Connects fail as a machine presenting another
	// host key would (a booting image before its boot data installed the pinned key).
	mismatchFirst int
	// mismatchLater makes every Connect after the first meet another host key.
	mismatchLater bool
	// signals lists the signals sent to the run. After a TERM the run replays termLines
	// and exits with termCode, as the runtime writing its checkpoint would; with
	// ignoreTerm it goes on (held) as a runtime that hangs would.
	signals    []string
	termLines  []string
	termCode   int
	ignoreTerm bool
	terminated map[string]bool // by work dir
	// runOutput answers Run; nil: no output.
	runOutput func(cmd string) []byte
	// downloaded records Download's remote dirs and prefixes; restored Restore's.
	downloaded  []string
	restored    []string
	secondLines []string
}

func (c *fakeConnector) Connect(ctx context.Context, m job.Machine, signer ssh.Signer) (Session, error) {
	if signer == nil {
		return nil, errors.New("no signer")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.connects++
	if c.connects <= c.mismatchFirst || (c.mismatchLater && c.connects > 1) {
		return nil, job.Wrap(job.CodeFailedPrecondition, fmt.Errorf("%w: machine presented ssh-ed25519 SHA256:other", sshrunner.ErrHostKeyMismatch), "verify host key")
	}
	if c.dropForever && c.connects > 1 {
		return nil, job.Errorf(job.CodeUnavailable, "connection refused")
	}
	return &fakeSession{c: c}, nil
}

type fakeSession struct{ c *fakeConnector }

func (s *fakeSession) Run(ctx context.Context, cmd string) ([]byte, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.c.commands = append(s.c.commands, cmd)
	if s.c.runOutput != nil {
		return s.c.runOutput(cmd), nil
	}
	return nil, nil
}
func (s *fakeSession) Upload(ctx context.Context, fsys fs.FS, dir string) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.c.uploaded == nil {
		s.c.uploaded = map[string]bool{}
	}
	return fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			s.c.uploaded[dir+"/"+p] = true
		}
		return err
	})
}
func (s *fakeSession) UploadFile(ctx context.Context, local, remote string) error {
	if _, err := os.Stat(local); err != nil {
		return err
	}
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.c.uploaded == nil {
		s.c.uploaded = map[string]bool{}
	}
	s.c.uploaded[remote] = true
	return nil
}
func (s *fakeSession) Start(ctx context.Context, wd, cmd string, env map[string]string) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.c.started++
	return nil
}
func (s *fakeSession) Follow(ctx context.Context, wd string, offset int64, onLine func([]byte, int64) error) (int, error) {
	var pos int64
	s.c.mu.Lock()
	lines, terminated := s.c.lines, s.c.terminated[wd]
	if s.c.secondLines != nil && s.c.started >= 2 {
		lines = s.c.secondLines
	}
	hang := s.c.ignoreTerm && len(s.c.signals) > 0
	s.c.mu.Unlock()
	if hang {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	if terminated {
		lines = append(lines[:len(lines):len(lines)], s.c.termLines...)
	}
	for i, l := range lines {
		end := pos + int64(len(l)) + 1
		if pos >= offset {
			if err := onLine([]byte(l), end); err != nil {
				return 0, err
			}
			s.c.mu.Lock()
			drop := (i == s.c.dropAt && s.c.dropOnce) || (i == 0 && s.c.dropForever)
			if drop {
				s.c.dropOnce = false
			}
			waitDownload := drop && s.c.dropAfterDownload
			s.c.mu.Unlock()
			for waitDownload {
				s.c.mu.Lock()
				n := s.c.downloads
				s.c.mu.Unlock()
				if n > 0 || ctx.Err() != nil {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			if drop {
				return 0, job.Errorf(job.CodeUnavailable, "connection lost")
			}
			if i == 0 && s.c.hold != nil && !terminated {
				select {
				case <-s.c.hold:
				case <-ctx.Done():
					return 0, ctx.Err()
				}
			}
		}
		pos = end
	}
	if terminated {
		return s.c.termCode, nil
	}
	return s.c.exitCode, nil
}
func (s *fakeSession) Signal(ctx context.Context, wd, sig string) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.c.signals = append(s.c.signals, sig)
	if sig == "TERM" && !s.c.ignoreTerm {
		if s.c.terminated == nil {
			s.c.terminated = map[string]bool{}
		}
		s.c.terminated[wd] = true
	}
	return nil
}
func (s *fakeSession) Download(ctx context.Context, dir, prefix string, expected map[string]string) ([]job.ManifestFile, error) {
	s.c.mu.Lock()
	s.c.downloads++
	s.c.downloaded = append(s.c.downloaded, dir+" -> "+prefix)
	hold := s.c.downloadHold
	s.c.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	var out []job.ManifestFile
	for p, h := range expected {
		out = append(out, job.ManifestFile{Path: p, Size: 1, SHA256: h})
	}
	return out, nil
}
func (s *fakeSession) Restore(ctx context.Context, prefix, dir string, files []job.ManifestFile) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.c.restored = append(s.c.restored, prefix+" -> "+dir)
	return nil
}
func (s *fakeSession) Close() error { return nil }

var okLines = []string{
	`{"v":1,"event":"start","time":1,"model":"m","total_steps":2,"epochs":1,"pairs_used":2,"pairs_skipped":0,"device":"cpu"}`,
	`{"v":1,"event":"step","time":2,"step":1,"total_steps":2,"epoch":0.5,"loss":2.5,"learning_rate":0.1,"tokens_per_second":10,"eta_seconds":1}`,
	`{"v":1,"event":"step","time":3,"step":2,"total_steps":2,"epoch":1,"loss":1.5,"learning_rate":0.0,"tokens_per_second":10,"eta_seconds":0}`,
	`{"v":1,"event":"eval","time":4,"step":2,"eval_loss":1.7,"perplexity":5.47,"phase":"after"}`,
	`{"v":1,"event":"done","time":5,"output_dir":"out","files":[{"path":"model.safetensors","size":1,"sha256":"aa"}],"metrics":{"eval_loss_after":1.7}}`,
}

type harness struct {
	t *testing.T
	// log, when set before open, replaces the logger that writes to t.Log.
	log   *slog.Logger
	dir   string
	prov  *fakeProvisioner
	conn  *fakeConnector
	drv   *Driver
	store *sqlite.Store
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), prov: newFakeProvisioner(), conn: &fakeConnector{lines: okLines}}
	h.open(cfg)
	return h
}

// newHarnessLog is newHarness with the Driver logging to log.
func newHarnessLog(t *testing.T, cfg Config, log *slog.Logger) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), prov: newFakeProvisioner(), conn: &fakeConnector{lines: okLines}, log: log}
	h.open(cfg)
	return h
}

func (h *harness) open(cfg Config) {
	st, err := sqlite.Open(context.Background(), filepath.Join(h.dir, "jobs.db"))
	if err != nil {
		h.t.Fatal(err)
	}
	cfg.DataDir = h.dir
	cfg.Runtime = fstest.MapFS{"launch.sh": {Data: []byte("#!/bin/sh\n")}}
	cfg.TeardownBackoff = time.Millisecond
	cfg.WeightsURL = "file:///weights"
	cfg.ReconnectTimeout = 2 * time.Second
	log := h.log
	if log == nil {
		log = testLogger(h.t)
	}
	drv, err := New(cfg, st, h.prov, h.conn, log)
	if err != nil {
		h.t.Fatal(err)
	}
	h.drv, h.store = drv, st
	h.t.Cleanup(func() {
		drv.Stop(context.Background())
		st.Close()
	})
}

// restart stops the driver as a service shutdown would and opens a new one on the same
// store and data dir.
func (h *harness) restart(cfg Config) {
	if err := h.drv.Stop(context.Background()); err != nil {
		h.t.Fatal(err)
	}
	h.store.Close()
	h.open(cfg)
	if err := h.drv.Start(context.Background()); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) submit(id string) *job.Job {
	h.t.Helper()
	j, created, err := h.drv.Submit(context.Background(), request(id, 2))
	if err != nil || !created {
		h.t.Fatalf("submit %s: %v (created %v)", id, err, created)
	}
	return j
}

func request(id string, n int) StartRequest {
	var pairs []string
	for i := 0; i < n; i++ {
		pairs = append(pairs, fmt.Sprintf(`{"prompt":"p%d","response":"r%d"}`, i, i))
	}
	req := StartRequest{Spec: job.Spec{TrainID: id, EndpointID: "ep", Version: 1, TrainingPairsCount: n,
		SLMType: "m", SourceLLM: "s", Provider: "local"}}
	for _, p := range pairs {
		req.Pairs = append(req.Pairs, []byte(p))
	}
	return req
}

func (h *harness) waitFor(id string, want job.Status) *job.Job {
	h.t.Helper()
	return h.waitUntil(id, func(j *job.Job) bool { return j.Status == want }, func(j *job.Job) string {
		return fmt.Sprintf("job %s is %s (error %+v), want %s", id, j.Status, j.Error, want)
	})
}

// waitUntil polls the stored job until done says so, for at most 10 s; then it fails the
// test with what late says of the job as last read.
func (h *harness) waitUntil(id string, done func(*job.Job) bool, late func(*job.Job) string) *job.Job {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		j, err := h.store.JobGet(context.Background(), id)
		if err != nil {
			h.t.Fatal(err)
		}
		if done(j) {
			return j
		}
		if time.Now().After(deadline) {
			h.t.Fatal(late(j))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
