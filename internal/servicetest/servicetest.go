// Package servicetest runs the real understudy-train binary for end-to-end tests and
// benchmarks: one `serve` process on loopback with its own data dir, and the helpers to
// drive it and to check that nothing of a job is left behind.
package servicetest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/api"
	"github.com/understudy-ai/training-service/internal/openapitest"
	"github.com/understudy-ai/training-service/internal/testenv"
)

// Prerequisites returns the bin dir, the runtime's Python and the tiny model, skipping the
// test when they are not built — except in CI, where a missing part is a failure.
func Prerequisites(t testing.TB) (bin, python, model string) {
	t.Helper()
	root := repoRoot()
	bin = envOr("UNDERSTUDY_BIN", filepath.Join(root, "bin"))
	python = os.Getenv("UNDERSTUDY_LOCAL_PYTHON")
	model = envOr("UNDERSTUDY_TINY_MODEL", filepath.Join(root, "build", "tiny-gpt2"))
	missing := []string{}
	for _, p := range []string{filepath.Join(bin, "understudy-train"), filepath.Join(bin, "pulumi"), filepath.Join(bin, "pulumi-resource-understudy"),
		filepath.Join(bin, "understudy-fakecloud"), filepath.Join(model, "config.json"), "/usr/sbin/sshd"} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	if python == "" {
		missing = append(missing, "UNDERSTUDY_LOCAL_PYTHON")
	}
	if len(missing) > 0 {
		msg := "end-to-end prerequisites missing (run through `make test`): " + strings.Join(missing, ", ")
		testenv.Missing(t, msg)
	}
	return bin, python, model
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// service is one understudy-train serve process.
type Service struct {
	// Data is the service's data dir; Addr its listen address once started.
	Data  string
	Addr  string
	Token string
	// Args and Env are added to the serve command line and environment. The command line
	// begins with --hub-check=false, so that no test asks the real Hugging Face Hub about
	// the Hub ids it posts; a test of the check turns it on in Args, with a --hub-endpoint
	// of its own.
	Args []string
	Env  []string
	// BackendURL is the Pulumi backend the service is started with (--backend-url) and
	// PulumiStackLs reads; empty: the data dir's file backend.
	BackendURL string
	// DatasetRoots and ModelRoots are passed as --dataset-root and --model-root. New sets
	// what the tests use: the directory WritePairs writes to, the test's temp dirs and the
	// repository's examples; the tiny model's parent. Set them to nil to start a service
	// without local datasets (models).
	DatasetRoots []string
	ModelRoots   []string
	// Workers is the local provider's workers dir (--local-workers-dir): outside the data
	// dir when the service runs as root, since its jobs then run as an unprivileged user
	// the data dir is closed to.
	Workers string
	// User, when set, is the unprivileged user the service runs as (NewAs).
	User *user.User

	t      testing.TB
	bin    string
	python string
	cmd    *exec.Cmd
	log    *syncBuffer
	// exited is closed when the process of the latest spawn has ended; bound when that
	// process has named the address it listens on (on stdout).
	exited chan struct{}
	bound  chan struct{}
}

// Running reports whether the serve process is up, and its pid.
func (s *Service) Running() (int, bool) {
	if s.cmd == nil {
		return 0, false
	}
	return s.cmd.Process.Pid, true
}

// repoRoot is the directory holding go.mod above the working directory.
func repoRoot() string {
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

// New prepares a service with a fresh data dir; Start runs it. Everything it starts is
// ended, by pid, when the test ends.
func New(t testing.TB, bin, python string) *Service {
	t.Helper()
	// No directory up the data dir's path may be group- or world-writable (sshd's
	// StrictModes refuses the worker's keys otherwise), which rules out the system's temp
	// dir: the data dir goes under the user's cache dir.
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	parent := filepath.Join(cache, "understudy-test")
	if err := os.MkdirAll(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	data, err := os.MkdirTemp(parent, "data-")
	if err != nil {
		t.Fatal(err)
	}
	s := &Service{t: t, bin: bin, python: python, Data: data, Token: testToken(),
		// t.TempDir's directories share one parent per test.
		DatasetRoots: []string{datasetsRoot(t), filepath.Dir(t.TempDir()), filepath.Join(repoRoot(), "examples")},
		ModelRoots:   []string{tinyModelRoot()},
		Workers:      filepath.Join(data, "workers")}
	if os.Geteuid() == 0 {
		s.Workers = filepath.Join(SharedParent(t), "workers-"+filepath.Base(data))
	}
	// Registered before anything starts: end every process of this data dir, by pid, then
	// remove it.
	t.Cleanup(func() {
		s.cleanup()
		os.RemoveAll(data)
		os.RemoveAll(s.Workers)
	})
	return s
}

// NewAs prepares a service that runs as the unprivileged user u (the caller is root): its
// data dir is u's, under SharedParent, and its local jobs run as u too. It is given no
// dataset root (send inline pairs) and the tiny model's parent as its model root.
func NewAs(t testing.TB, bin, python string, u *user.User) *Service {
	t.Helper()
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	data, err := os.MkdirTemp(SharedParent(t), "data-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(data, uid, gid); err != nil {
		t.Fatal(err)
	}
	s := &Service{t: t, bin: bin, python: python, Data: data, Token: testToken(),
		ModelRoots: []string{tinyModelRoot()}, Workers: filepath.Join(data, "workers"), User: u}
	t.Cleanup(func() {
		s.cleanup()
		os.RemoveAll(data)
	})
	return s
}

// SharedParent is a directory every user can traverse (root's, 0755, not under /tmp so
// that sshd's StrictModes accepts what is below it) for data and workers dirs of services
// whose jobs run as another user than the test.
func SharedParent(t testing.TB) string {
	t.Helper()
	const dir = "/var/lib/understudy-test"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func tinyModelRoot() string {
	return filepath.Dir(envOr("UNDERSTUDY_TINY_MODEL", filepath.Join(repoRoot(), "build", "tiny-gpt2")))
}

func (s *Service) Start() {
	s.t.Helper()
	s.spawn()
	s.WaitReady(60 * time.Second)
}

// spawn starts the serve process. The first start listens on a port the service picks
// itself (--listen 127.0.0.1:0), learnt from its stdout, so that no other process can take
// the port between its choice and its use; a restart listens on the same address again.
func (s *Service) spawn() {
	s.t.Helper()
	listen := s.Addr
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	s.log = &syncBuffer{}
	addr := make(chan string, 1)
	args := append([]string{"serve", "--listen", listen, "--data-dir", s.Data, "--local-workers-dir", s.Workers, "--hub-check=false"}, s.Args...)
	if s.BackendURL != "" {
		args = append(args, "--backend-url", s.BackendURL)
	}
	for _, d := range s.DatasetRoots {
		args = append(args, "--dataset-root", d)
	}
	for _, d := range s.ModelRoots {
		args = append(args, "--model-root", d)
	}
	cmd := exec.Command(filepath.Join(s.bin, "understudy-train"), args...)
	cmd.Env = append(append(os.Environ(), "UNDERSTUDY_API_TOKEN="+s.Token, "UNDERSTUDY_LOCAL_PYTHON="+s.python), s.Env...)
	if s.User != nil {
		uid, _ := strconv.Atoi(s.User.Uid)
		gid, _ := strconv.Atoi(s.User.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		cmd.Env = append(cmd.Env, "HOME="+s.Data, "USER="+s.User.Username, "LOGNAME="+s.User.Username)
		cmd.Dir = s.Data
	}
	cmd.Stdout = &addrWatch{log: s.log, found: addr}
	cmd.Stderr = s.log
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.cmd = cmd
	exited, bound := make(chan struct{}), make(chan struct{})
	s.exited, s.bound = exited, bound
	go func() { cmd.Wait(); close(exited) }()
	var got string // set before bound is closed
	fresh := s.Addr == ""
	go func() {
		select {
		case got = <-addr:
			if fresh || got == listen {
				close(bound)
			}
		case <-exited:
		}
	}()
	if fresh {
		select {
		case <-bound:
			s.Addr = got
		case <-exited:
			s.t.Fatalf("the service exited before it listened:\n%s", s.log)
		case <-time.After(90 * time.Second):
			s.t.Fatalf("the service did not name its address within 90s:\n%s", s.log)
		}
	}
}

// WaitReady waits until this process has named its address and /readyz answers 200 there.
// It fails at once if the process exits (so a restart that could not listen on its
// address again is told, not mistaken for another service answering there).
func (s *Service) WaitReady(timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-s.exited:
			s.t.Fatalf("the service exited before it was ready:\n%s", s.log)
		default:
		}
		resp, err := s.get("/readyz")
		if err == nil {
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				s.CheckResponse("GET", "/readyz", resp, raw)
				return
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("service did not become ready:\n%s", s.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Replica prepares another serve process of the same service: the same data dir, workers
// dir, token, arguments and environment, on an address of its own. With a shared
// PostgreSQL store (--store-url) it stands by while another replica leads (StartStandby).
// Its process ends before s's cleanup, which ends whatever is left of both.
func (s *Service) Replica() *Service {
	r := &Service{t: s.t, bin: s.bin, python: s.python, Data: s.Data, Token: s.Token,
		Args: slices.Clone(s.Args), Env: slices.Clone(s.Env), BackendURL: s.BackendURL,
		DatasetRoots: s.DatasetRoots, ModelRoots: s.ModelRoots, Workers: s.Workers, User: s.User}
	s.t.Cleanup(func() {
		r.Stop()
		if s.t.Failed() && r.log != nil {
			s.t.Logf("replica's log:\n%s", r.log)
		}
	})
	return r
}

// StartStandby starts a replica that waits to lead a shared store: it is up when /healthz
// says so with the role "standby".
func (s *Service) StartStandby() {
	s.t.Helper()
	s.spawn()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-s.exited:
			s.t.Fatalf("the replica exited before it stood by:\n%s", s.log)
		default:
		}
		resp, err := s.get("/healthz")
		if err == nil {
			var h struct{ Role string }
			json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			if resp.StatusCode == 200 && h.Role == "standby" {
				return
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("replica did not stand by:\n%s", s.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitExit waits up to timeout for the serve process to end by itself and returns its exit
// status and its output.
func (s *Service) WaitExit(timeout time.Duration) (int, string) {
	s.t.Helper()
	select {
	case <-s.exited:
	case <-time.After(timeout):
		s.t.Fatalf("the service did not exit within %v:\n%s", timeout, s.log)
	}
	code := s.cmd.ProcessState.ExitCode()
	s.cmd = nil
	return code, s.log.String()
}

// Kill ends the service abruptly, as a crash would.
func (s *Service) Kill() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Stop ends the service as an operator would.
func (s *Service) Stop() {
	if s.cmd == nil {
		return
	}
	signalWait(s.cmd, s.exited, 60*time.Second)
	s.cmd = nil
}

// terminate sends cmd SIGTERM and waits for it to end, killing it after grace.
func terminate(cmd *exec.Cmd, grace time.Duration) {
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	signalWait(cmd, done, grace)
}

// signalWait sends cmd SIGTERM and waits until exited is closed, killing it after grace.
func signalWait(cmd *exec.Cmd, exited <-chan struct{}, grace time.Duration) {
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(grace):
		cmd.Process.Kill()
		<-exited
	}
}

// get asks this process, once it has named its address, for path; before that it fails
// as a refused connection would.
func (s *Service) get(path string) (*http.Response, error) {
	select {
	case <-s.bound:
		return http.Get("http://" + s.Addr + path)
	default:
		return nil, errNotBound
	}
}

var errNotBound = errors.New("the service has not named its address yet")

// syncBuffer is a bytes.Buffer that the process's output and the test may use at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// addrWatch copies the service's stdout to log and sends, once, the address named by the
// first line saying where it serves or stands by ("understudy-train serving on http://ADDR
// (…)", "understudy-train on http://ADDR: waiting to lead …").
type addrWatch struct {
	log   *syncBuffer
	found chan<- string
	line  []byte
	sent  bool
}

var servingLine = regexp.MustCompile(`^understudy-train (?:serving )?on http://([^\s/]+?):?(?:\s|$)`)

func (w *addrWatch) Write(p []byte) (int, error) {
	w.log.Write(p)
	w.line = append(w.line, p...)
	for {
		i := bytes.IndexByte(w.line, '\n')
		if i < 0 {
			return len(p), nil
		}
		if m := servingLine.FindSubmatch(w.line[:i]); m != nil && !w.sent {
			w.sent = true
			w.found <- string(m[1])
		}
		w.line = w.line[i+1:]
	}
}

// cleanup stops the service, then ends any process still running from this data dir:
// each is found by its pid and its command line or environment naming the data dir.
func (s *Service) cleanup() {
	s.Stop()
	if s.t.Failed() && s.log != nil {
		s.t.Logf("service log:\n%s", s.log)
	}
	for _, pid := range s.Processes() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// Processes lists the pids whose command line or environment mention the data dir.
func (s *Service) Processes() []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		environ, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if bytes.Contains(cmdline, []byte(s.Data)) || bytes.Contains(cmdline, []byte(s.Workers+"/")) ||
			bytes.Contains(environ, []byte("UNDERSTUDY_WORKER="+s.Workers+"/")) ||
			bytes.Contains(environ, []byte("UNDERSTUDY_FAKE_MACHINE="+s.Data)) {
			out = append(out, pid)
		}
	}
	return out
}

func (s *Service) Request(method, path string, body any, out any) int {
	s.t.Helper()
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, "http://"+s.Addr+path, rd)
	req.Header.Set("Authorization", "Bearer "+s.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	s.CheckResponse(method, path, resp, raw)
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			s.t.Fatalf("%s %s: %v: %s", method, path, err, raw)
		}
	}
	return resp.StatusCode
}

// openAPI is the API's OpenAPI document, which every response the tests read must match.
var openAPI = sync.OnceValues(func() (*openapitest.Doc, error) {
	return openapitest.Load(api.OpenAPI())
})

// CheckResponse fails the test (and goes on) when a response to method path does not
// match the API's OpenAPI document: an undocumented status or content type, or a JSON
// body that does not match its schema. Request checks every response it reads; tests
// that call the API themselves can pass theirs here.
func (s *Service) CheckResponse(method, path string, resp *http.Response, body []byte) {
	s.t.Helper()
	doc, err := openAPI()
	if err != nil {
		s.t.Fatalf("load the OpenAPI document: %v", err)
	}
	if err := doc.ValidateResponse(method, path, resp.StatusCode, resp.Header.Get("Content-Type"), body); err != nil {
		s.t.Errorf("the response does not match api/openapi.json: %v", err)
	}
}

type Job struct {
	TrainID  string `json:"train_id"`
	Status   string `json:"status"`
	Progress struct {
		Step       int      `json:"step"`
		TotalSteps int      `json:"total_steps"`
		Loss       *float64 `json:"loss"`
	} `json:"progress"`
	Machine *struct {
		InstanceID     string  `json:"instance_id"`
		Host           string  `json:"host"`
		Port           int     `json:"port"`
		GPU            string  `json:"gpu"`
		HourlyPriceUSD float64 `json:"hourly_price_usd"`
		HostKeyTrust   string  `json:"host_key_trust"`
		LeaseFile      string  `json:"lease_file"`
	} `json:"machine"`
	CostUSD    float64 `json:"cost_usd"`
	WeightsURI string  `json:"weights_uri"`
	Manifest   *struct {
		Files   []ManifestFile `json:"files"`
		Metrics map[string]any `json:"metrics"`
	} `json:"weights_manifest"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Attempts []struct {
		Number          int     `json:"number"`
		InstanceID      string  `json:"instance_id"`
		ResumedFromStep int     `json:"resumed_from_step"`
		Step            int     `json:"step"`
		Reason          string  `json:"reason"`
		CostUSD         float64 `json:"cost_usd"`
	} `json:"attempts"`
}

func (s *Service) Job(id string) Job {
	var j Job
	if code := s.Request("GET", "/api/v1/training/"+id+"/status", nil, &j); code != 200 {
		s.t.Fatalf("status %s: %d", id, code)
	}
	return j
}

// WaitFor polls until cond holds for the job or the deadline passes.
func (s *Service) WaitFor(id string, timeout time.Duration, what string, cond func(Job) bool) Job {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		j := s.Job(id)
		if cond(j) {
			return j
		}
		if j.Status == "completed" || j.Status == "failed" || j.Status == "cancelled" {
			s.t.Fatalf("job %s ended %s (error %+v) while waiting for %s", id, j.Status, j.Error, what)
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("job %s: waited %s for %s; it is %s (error %+v)", id, timeout, what, j.Status, j.Error)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (s *Service) StackNames() []string {
	var out struct {
		Stacks []struct{ Name string } `json:"stacks"`
	}
	if code := s.Request("GET", "/api/v1/stacks", nil, &out); code != 200 {
		s.t.Fatalf("stacks: %d", code)
	}
	var names []string
	for _, st := range out.Stacks {
		names = append(names, st.Name)
	}
	return names
}

// PulumiStackLs lists the stacks as an operator would, with the pinned CLI and the backend.
func (s *Service) PulumiStackLs(ctx context.Context) string {
	passphrase, _ := os.ReadFile(filepath.Join(s.Data, "pulumi-passphrase"))
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, "pulumi"), "stack", "ls", "--all", "--json")
	cmd.Dir = repoRoot()
	// The operator's environment: the service's own (an object store's credentials) and
	// the backend.
	cmd.Env = append(append(os.Environ(), s.Env...),
		"PULUMI_BACKEND_URL="+s.backendURL(),
		"PULUMI_HOME="+filepath.Join(s.Data, "pulumi-home"),
		"PULUMI_CONFIG_PASSPHRASE="+strings.TrimSpace(string(passphrase)),
		"PULUMI_SKIP_UPDATE_CHECK=true")
	out, err := cmd.CombinedOutput()
	if err != nil {
		s.t.Fatalf("pulumi stack ls: %v\n%s", err, out)
	}
	return string(out)
}

// datasetsRoot is the directory under which WritePairs writes, a --dataset-root of every
// service New prepares: under the user's cache dir, shared by all tests.
func datasetsRoot(t testing.TB) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(cache, "understudy-test", "datasets")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// WritePairs writes n learnable pairs and returns the path: under a directory that every
// service New prepares reads datasets from (DatasetRoots), removed when the test ends.
func WritePairs(t testing.TB, n int) string {
	dir, err := os.MkdirTemp(datasetsRoot(t), "pairs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := filepath.Join(dir, "pairs.jsonl")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	for i := 0; i < n; i++ {
		fmt.Fprintf(w, `{"prompt":"What is %d plus %d?","response":"%d plus %d is %d."}`+"\n", i, i+1, i, i+1, 2*i+1)
	}
	w.Flush()
	return p
}

// backendURL is the Pulumi backend the service uses.
func (s *Service) backendURL() string {
	if s.BackendURL != "" {
		return s.BackendURL
	}
	return "file://" + filepath.Join(s.Data, "pulumi")
}

// MakeDestroyStack runs `make destroy-stack STACK=<stack>` from the repository root for
// the service's data dir, with the service's environment: the Makefile must find the
// service's backend (PULUMI_BACKEND_URL when it has one) by itself.
func (s *Service) MakeDestroyStack(ctx context.Context, stack string) (string, error) {
	cmd := exec.CommandContext(ctx, "make", "--no-print-directory", "destroy-stack", "STACK="+stack,
		"DATA_DIR="+s.Data, "BIN="+s.bin)
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), s.Env...)
	if s.BackendURL != "" {
		cmd.Env = append(cmd.Env, "PULUMI_BACKEND_URL="+s.BackendURL)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// OperatorDestroy destroys and removes a job's stack as an operator would from the
// repository root (`make destroy-stack`): the pinned CLI, the service's backend and
// passphrase file, and env (a cloud's API key) added to the environment.
func (s *Service) OperatorDestroy(ctx context.Context, stack string, env []string) (string, error) {
	var all bytes.Buffer
	for _, args := range [][]string{{"destroy", "--stack", stack, "--yes", "--non-interactive"}, {"stack", "rm", stack, "--yes", "--non-interactive"}} {
		cmd := exec.CommandContext(ctx, filepath.Join(s.bin, "pulumi"), args...)
		cmd.Dir = repoRoot()
		cmd.Env = append(append(append(os.Environ(), s.Env...),
			"PULUMI_BACKEND_URL="+s.backendURL(),
			"PULUMI_HOME="+filepath.Join(s.Data, "pulumi-home"),
			"PULUMI_CONFIG_PASSPHRASE_FILE="+filepath.Join(s.Data, "pulumi-passphrase"),
			"PULUMI_SKIP_UPDATE_CHECK=true"), env...)
		out, err := cmd.CombinedOutput()
		all.Write(out)
		if err != nil {
			return all.String(), err
		}
	}
	return all.String(), nil
}

// ManifestFile is one stored file as a job's status reports it.
type ManifestFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// testToken is an API token the service takes: long and random (it refuses weak ones).
func testToken() string {
	b := make([]byte, 24)
	rand.Read(b)
	return "test-" + hex.EncodeToString(b)
}
