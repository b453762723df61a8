package stacks

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/auto"
	"github.com/pulumi/pulumi/sdk/v3/go/auto/optdestroy"
	"github.com/pulumi/pulumi/sdk/v3/go/auto/optrefresh"
	"github.com/pulumi/pulumi/sdk/v3/go/auto/optup"
	"github.com/pulumi/pulumi/sdk/v3/go/common/apitype"
	"github.com/pulumi/pulumi/sdk/v3/go/common/workspace"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/provider/cloudapi"
	"github.com/understudy-ai/training-service/provider/version"
)

// Manager runs the stacks of training jobs. It is safe for concurrent use.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	cmd     auto.PulumiCommand
	env     map[string]string
	project workspace.Project

	mu    sync.Mutex
	locks map[string]*stackLock // per stack name
	// background tracks the work Up leaves running after it returns.
	background sync.WaitGroup
	// settled names the stacks whose last update in this process finished cleanly, so
	// their destroy can skip the check for pending operations.
	settled map[string]bool
}

type stackLock struct {
	mu   sync.Mutex
	refs int
}

// Summary describes one stack of the project.
type Summary struct {
	Name             string            // the stack's name: the job's train_id
	Tags             map[string]string // train_id, endpoint_id, version, provider, and Pulumi's own
	ResourceCount    int               // resources in the stack's state, the stack itself included
	LastUpdate       time.Time         // zero when never updated
	UpdateInProgress bool
}

// Open checks cfg, prepares the data directories, and installs the in-repo provider plugin
// into PULUMI_HOME when it is missing or differs from cfg.PluginBin.
func Open(ctx context.Context, cfg Config) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	passphrase := cfg.Passphrase
	if passphrase == "" {
		if passphrase, err = passphraseFromFile(cfg.PassphraseFile); err != nil {
			return nil, job.Wrap(job.CodeFailedPrecondition, err, "read stack passphrase")
		}
	}
	if dir, ok := strings.CutPrefix(cfg.BackendURL, "file://"); ok {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, job.Wrap(job.CodeFailedPrecondition, err, "create backend directory")
		}
	}
	for _, dir := range []string{cfg.Home, workspacesDir(cfg)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, job.Wrap(job.CodeFailedPrecondition, err, "create %s", dir)
		}
	}
	cmd, err := pulumiCommand(cfg)
	if err != nil {
		return nil, job.Wrap(job.CodeFailedPrecondition, err, "use the Pulumi CLI at %s", cfg.PulumiBin)
	}
	env := map[string]string{}
	for k, v := range cfg.Env {
		env[k] = v
	}
	for k, v := range map[string]string{
		"PULUMI_HOME":        cfg.Home,
		"PULUMI_BACKEND_URL": cfg.BackendURL,
		// Always the resolved passphrase, so that neither a passphrase file nor a
		// passphrase in the service's own environment can disagree with it.
		"PULUMI_CONFIG_PASSPHRASE":      passphrase,
		"PULUMI_CONFIG_PASSPHRASE_FILE": "",
		"PULUMI_SKIP_UPDATE_CHECK":      "true",
		// Offline by design: plugins come from PULUMI_HOME only, never a download and
		// never a stray binary on PATH.
		"PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
		"PULUMI_IGNORE_AMBIENT_PLUGINS":               "true",
	} {
		env[k] = v
	}
	m := &Manager{
		cfg: cfg,
		log: cfg.Logger,
		cmd: cmd,
		env: env,
		project: workspace.Project{
			Name:    Project,
			Runtime: workspace.NewProjectRuntimeInfo("go", nil),
			Backend: &workspace.ProjectBackend{URL: cfg.BackendURL},
		},
		locks:   map[string]*stackLock{},
		settled: map[string]bool{},
	}
	endOrphanedPlugins(cfg.Home, m.log)
	if err := m.ensurePlugin(ctx); err != nil {
		return nil, err
	}
	m.log.Info("stacks ready", "backend", redactURL(cfg.BackendURL), "pulumi_home", cfg.Home,
		"pulumi", cfg.PulumiBin, "plugin_version", version.Version)
	return m, nil
}

func workspacesDir(cfg Config) string { return filepath.Join(cfg.Home, "understudy-workspaces") }

// pulumiCommand wraps the pinned CLI. The Automation API looks for <root>/bin/pulumi, so a
// binary anywhere else is reached through a symlink under PULUMI_HOME.
func pulumiCommand(cfg Config) (auto.PulumiCommand, error) {
	bin, err := filepath.Abs(cfg.PulumiBin)
	if err != nil {
		return nil, err
	}
	root := filepath.Dir(filepath.Dir(bin))
	if filepath.Base(bin) != "pulumi" || filepath.Base(filepath.Dir(bin)) != "bin" {
		root = filepath.Join(cfg.Home, "understudy-cli")
		link := filepath.Join(root, "bin", "pulumi")
		if err := os.MkdirAll(filepath.Dir(link), 0o700); err != nil {
			return nil, err
		}
		_ = os.Remove(link)
		if err := os.Symlink(bin, link); err != nil {
			return nil, err
		}
	}
	return auto.NewPulumiCommand(&auto.PulumiCommandOptions{Root: root})
}

// lockStack serialises operations on one stack inside this process.
func (m *Manager) lockStack(name string) func() {
	m.mu.Lock()
	l, ok := m.locks[name]
	if !ok {
		l = &stackLock{}
		m.locks[name] = l
	}
	l.refs++
	m.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		m.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(m.locks, name)
		}
		m.mu.Unlock()
	}
}

// workspace makes a fresh local workspace in a directory of its own, removed by the
// returned cleanup. Nothing of value lives there: state and tags are in the backend, and
// the secrets salt is in the stack's state.
func (m *Manager) workspace(ctx context.Context, program pulumi.RunFunc) (auto.Workspace, func(), error) {
	dir, err := os.MkdirTemp(workspacesDir(m.cfg), "ws-")
	if err != nil {
		return nil, nil, job.Wrap(job.CodeUnavailable, err, "create workspace")
	}
	cleanup := func() { os.RemoveAll(dir) }
	if program == nil {
		// Destroy and the read-only commands never run the program.
		program = func(*pulumi.Context) error { return nil }
	}
	ws, err := auto.NewLocalWorkspace(ctx,
		auto.WorkDir(dir),
		auto.Project(m.project),
		auto.Program(program),
		auto.PulumiHome(m.cfg.Home),
		auto.Pulumi(m.cmd),
		auto.EnvVars(m.env),
		auto.SecretsProvider("passphrase"),
	)
	if err != nil {
		cleanup()
		return nil, nil, job.Wrap(job.CodeUnavailable, err, "create workspace")
	}
	return ws, cleanup, nil
}

// maxStackName is Pulumi's limit on a stack name.
const maxStackName = 100

// StackName is the name of a job's stack: the train_id itself when it is shorter than
// Pulumi's longest stack name (100), else its first 83 characters, "-" and 16 hex digits of
// its sha256, exactly 100 long. A train_id of exactly 100 characters is shortened too, so
// that it can never be the shortened name of a longer one: two train_ids never share a
// stack (one job's teardown can never destroy another's machine). The stack's train_id tag
// always holds the full id.
func StackName(trainID string) string {
	if len(trainID) < maxStackName {
		return trainID
	}
	sum := sha256.Sum256([]byte(trainID))
	return trainID[:maxStackName-17] + "-" + hex.EncodeToString(sum[:])[:16]
}

// stackNameFor checks trainID and returns its stack's name.
func stackNameFor(trainID string) (string, error) {
	if !job.IDPattern.MatchString(trainID) {
		return "", job.Errorf(job.CodeInvalidArgument, "train_id %q: want 1-128 letters, digits, '_', '.', '-'", trainID)
	}
	return StackName(trainID), nil
}

// Up creates or updates the job's stack from spec and returns its outputs. log receives
// the engine's progress, one line at a time; it may be nil. Up returns as soon as the
// machine is reported, while the update goes on recording it: log may still be called
// after Up has returned, from another goroutine.
func (m *Manager) Up(ctx context.Context, spec programs.Spec, log func(line string)) (programs.Outputs, error) {
	prog, err := programs.For(spec.Provider)
	if err != nil {
		return programs.Outputs{}, err
	}
	if err := prog.Validate(spec); err != nil {
		return programs.Outputs{}, err
	}
	name := StackName(spec.TrainID)
	unlock := m.lockStack(name)
	l := m.log.With("train_id", spec.TrainID, "stack", name, "provider", spec.Provider)
	started := time.Now()
	m.setSettled(name, false)

	// The program reports the machine as soon as the engine has created and recorded it;
	// the update's own bookkeeping afterwards (reading outputs and history back, two or three
	// CLI runs) need not delay the job.
	ready := make(chan programs.Outputs, 1)
	notify := func(o programs.Outputs) {
		select {
		case ready <- o:
		default:
		}
	}
	ws, cleanup, err := m.workspace(ctx, prog.FuncNotify(spec, notify))
	if err != nil {
		unlock()
		return programs.Outputs{}, err
	}
	release := func() {
		cleanup()
		unlock()
	}
	// Create first: a new job's stack does not exist, and a failed select costs a CLI run.
	stack, err := auto.NewStack(ctx, name, ws)
	if auto.IsCreateStack409Error(err) {
		stack, err = auto.SelectStack(ctx, name, ws)
	}
	if err != nil {
		release()
		return programs.Outputs{}, m.classify(ctx, err, "select stack %s", name)
	}
	// The train_id tag first, so that a stack whose update fails or is interrupted is still
	// traceable to its job (a long train_id's stack name is shortened).
	tags := programs.Tags(spec)
	if err := ws.SetTag(ctx, name, programs.TagTrainID, tags[programs.TagTrainID]); err != nil {
		release()
		return programs.Outputs{}, m.classify(ctx, err, "tag stack %s", name)
	}

	// The update runs under its own context: cancelling ctx interrupts it only until the
	// machine is reported; after that the update is left to finish recording it.
	upCtx, upCancel := context.WithCancel(context.WithoutCancel(ctx))
	reported := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			upCancel()
		case <-reported:
		}
	}()
	type result struct {
		res auto.UpResult
		err error
	}
	done := make(chan result, 1)
	diag := &diagnostics{}
	w := newLineWriter(diag.tee(log))
	go func() {
		res, err := withStaleLockRecovery(upCtx, stack, l, func() (auto.UpResult, error) {
			return stack.Up(upCtx, optup.ProgressStreams(w), optup.ErrorProgressStreams(w))
		})
		w.Flush()
		done <- result{res, err}
	}()

	var out programs.Outputs
	select {
	case out = <-ready:
		close(reported)
	case r := <-done:
		close(reported)
		upCancel()
		if r.err != nil {
			release()
			l.Warn("stack up failed", "phase", "up", "error", r.err, "duration", time.Since(started))
			return programs.Outputs{}, m.classify(ctx, r.err, "update stack %s%s", name, diag.suffix())
		}
		// An update that changed nothing reports no new values: read the recorded ones.
		if out, err = programs.DecodeOutputs(plainOutputs(r.res.Outputs)); err != nil {
			release()
			return programs.Outputs{}, err
		}
		done <- r
	}
	l.Info("machine up", "phase", "up", "instance_id", out.InstanceID, "duration", time.Since(started))

	// Finish in the background, still holding the stack's lock so that a destroy waits:
	// the update's end, then the remaining tags (one CLI run each).
	m.background.Add(1)
	go func() {
		defer m.background.Done()
		defer release()
		defer upCancel()
		r := <-done
		if r.err != nil {
			l.Error("stack update failed after the machine was reported", "phase", "up", "error", r.err)
			return
		}
		m.setSettled(name, true)
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		for _, key := range []string{programs.TagEndpointID, programs.TagVersion, programs.TagProvider} {
			if tags[key] == "" {
				continue
			}
			if err := ws.SetTag(tctx, name, key, tags[key]); err != nil {
				l.Warn("tag stack", "tag", key, "error", err)
			}
		}
		l.Info("stack up", "phase", "up", "duration", time.Since(started))
	}()
	return out, nil
}

// Close waits, until ctx ends, for the work that Up calls left running in the background,
// so that a stopping service does not cut an update short.
func (m *Manager) Close(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		m.background.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Settle waits until the work an Up of the job left in the background (the end of the
// update, the remaining tags) is done.
func (m *Manager) Settle(trainID string) {
	unlock := m.lockStack(StackName(trainID))
	unlock()
}

func (m *Manager) setSettled(name string, v bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v {
		m.settled[name] = true
	} else {
		delete(m.settled, name)
	}
}

func (m *Manager) isSettled(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.settled[name]
}

// Destroy destroys the job's stack and removes it. A missing stack is success. It
// recovers from an interrupted update: a lock whose process is gone is cleared, and
// pending operations are dropped before the destroy.
func (m *Manager) Destroy(ctx context.Context, trainID string, log func(line string)) error {
	name, err := stackNameFor(trainID)
	if err != nil {
		return err
	}
	unlock := m.lockStack(name)
	defer unlock()
	l := m.log.With("train_id", trainID, "stack", name)
	started := time.Now()

	ws, cleanup, err := m.workspace(ctx, nil)
	if err != nil {
		return err
	}
	defer cleanup()
	stack, err := auto.SelectStack(ctx, name, ws)
	if auto.IsSelectStack404Error(err) {
		l.Info("stack already gone", "phase", "destroy")
		return nil
	}
	if err != nil {
		return m.classify(ctx, err, "select stack %s", name)
	}
	if !m.isSettled(name) {
		if err := m.dropPendingOperations(ctx, stack, l); err != nil {
			return err
		}
	}
	diag := &diagnostics{}
	w := newLineWriter(diag.tee(log))
	_, err = withStaleLockRecovery(ctx, stack, l, func() (auto.DestroyResult, error) {
		return stack.Destroy(ctx, optdestroy.ProgressStreams(w), optdestroy.ErrorProgressStreams(w))
	})
	w.Flush()
	if err != nil {
		m.setSettled(name, false)
		l.Warn("stack destroy failed", "phase", "destroy", "error", err)
		return m.classify(ctx, err, "destroy stack %s%s", name, diag.suffix())
	}
	if err := ws.RemoveStack(ctx, name); err != nil {
		return m.classify(ctx, err, "remove stack %s", name)
	}
	m.setSettled(name, false)
	if log != nil {
		// The engine's last words suggest `pulumi stack rm`; it has been done.
		log("stack " + name + " removed")
	}
	l.Info("stack destroyed", "phase", "destroy", "duration", time.Since(started))
	return nil
}

// Outputs returns the outputs of the job's stack: job.CodeNotFound when there is no such
// stack, job.CodeFailedPrecondition when it has never been updated successfully.
func (m *Manager) Outputs(ctx context.Context, trainID string) (programs.Outputs, error) {
	name, err := stackNameFor(trainID)
	if err != nil {
		return programs.Outputs{}, err
	}
	ws, cleanup, err := m.workspace(ctx, nil)
	if err != nil {
		return programs.Outputs{}, err
	}
	defer cleanup()
	stack, err := auto.SelectStack(ctx, name, ws)
	if auto.IsSelectStack404Error(err) {
		return programs.Outputs{}, job.Errorf(job.CodeNotFound, "no stack %s", name)
	}
	if err != nil {
		return programs.Outputs{}, m.classify(ctx, err, "select stack %s", name)
	}
	outs, err := stack.Outputs(ctx)
	if err != nil {
		return programs.Outputs{}, m.classify(ctx, err, "read outputs of stack %s", name)
	}
	if len(outs) == 0 {
		return programs.Outputs{}, job.Errorf(job.CodeFailedPrecondition, "stack %s has no outputs", name)
	}
	return programs.DecodeOutputs(plainOutputs(outs))
}

// Refresh asks every resource of the job's stack for its state at its provider (pulumi
// refresh: the in-repo resources' Read) and returns the resources as now recorded: a machine
// terminated outside the service is gone from the list, one that stopped says so in its
// outputs. job.CodeNotFound when there is no such stack.
func (m *Manager) Refresh(ctx context.Context, trainID string) ([]programs.Resource, error) {
	name, err := stackNameFor(trainID)
	if err != nil {
		return nil, err
	}
	unlock := m.lockStack(name)
	defer unlock()
	l := m.log.With("train_id", trainID, "stack", name)
	ws, cleanup, err := m.workspace(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	stack, err := auto.SelectStack(ctx, name, ws)
	if auto.IsSelectStack404Error(err) {
		return nil, job.Errorf(job.CodeNotFound, "no stack %s", name)
	}
	if err != nil {
		return nil, m.classify(ctx, err, "select stack %s", name)
	}
	diag := &diagnostics{}
	w := newLineWriter(diag.tee(nil))
	started := time.Now()
	_, err = withStaleLockRecovery(ctx, stack, l, func() (auto.RefreshResult, error) {
		return stack.Refresh(ctx, optrefresh.ProgressStreams(w), optrefresh.ErrorProgressStreams(w))
	})
	w.Flush()
	if err != nil {
		return nil, m.classify(ctx, err, "refresh stack %s%s", name, diag.suffix())
	}
	l.Info("stack refreshed", "phase", "refresh", "duration", time.Since(started))
	return m.resources(ctx, stack)
}

// resources reads the resources of a stack's state, without their secret outputs.
func (m *Manager) resources(ctx context.Context, stack auto.Stack) ([]programs.Resource, error) {
	dep, err := stack.Export(ctx)
	if err != nil {
		return nil, m.classify(ctx, err, "export stack %s", stack.Name())
	}
	if len(dep.Deployment) == 0 {
		return nil, nil
	}
	var doc struct {
		Resources []struct {
			Type    string         `json:"type"`
			ID      string         `json:"id"`
			Custom  bool           `json:"custom"`
			Outputs map[string]any `json:"outputs"`
		} `json:"resources"`
	}
	if err := json.Unmarshal(dep.Deployment, &doc); err != nil {
		return nil, job.Wrap(job.CodeInternal, err, "read state of stack %s", stack.Name())
	}
	var out []programs.Resource
	for _, r := range doc.Resources {
		if !r.Custom || strings.HasPrefix(r.Type, "pulumi:providers:") {
			continue
		}
		outputs := map[string]any{}
		for k, v := range r.Outputs {
			if obj, ok := v.(map[string]any); ok && obj["4dabf18193072939515e22adb298388d"] != nil {
				continue // a secret: encrypted, and not needed
			}
			outputs[k] = v
		}
		out = append(out, programs.Resource{Type: r.Type, ID: r.ID, Outputs: outputs})
	}
	return out, nil
}

// ResourceIDs returns the provider ids of every resource in every stack of the project,
// each mapped to its stack's name: what the service still tracks at its clouds.
func (m *Manager) ResourceIDs(ctx context.Context) (map[string]string, error) {
	ws, cleanup, err := m.workspace(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	list, err := ws.ListStacks(ctx)
	if err != nil {
		return nil, m.classify(ctx, err, "list stacks")
	}
	ids := map[string]string{}
	for _, s := range list {
		stack, err := auto.SelectStack(ctx, s.Name, ws)
		if auto.IsSelectStack404Error(err) {
			continue
		}
		if err != nil {
			return nil, m.classify(ctx, err, "select stack %s", s.Name)
		}
		res, err := m.resources(ctx, stack)
		if err != nil {
			return nil, err
		}
		for _, r := range res {
			if r.ID != "" {
				ids[r.ID] = s.Name
			}
		}
	}
	return ids, nil
}

// List returns every stack of the project, sorted by name.
func (m *Manager) List(ctx context.Context) ([]Summary, error) {
	ws, cleanup, err := m.workspace(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	stacks, err := ws.ListStacks(ctx)
	if err != nil {
		return nil, m.classify(ctx, err, "list stacks")
	}
	out := make([]Summary, 0, len(stacks))
	for _, s := range stacks {
		sum := Summary{Name: s.Name, UpdateInProgress: s.UpdateInProgress}
		if s.ResourceCount != nil {
			sum.ResourceCount = *s.ResourceCount
		}
		if s.LastUpdate != "" {
			if t, err := time.Parse(time.RFC3339, s.LastUpdate); err == nil {
				sum.LastUpdate = t
			}
		}
		tags, err := ws.ListTags(ctx, s.Name)
		if err != nil {
			// The stack may have been removed since the listing.
			if auto.IsSelectStack404Error(err) || strings.Contains(err.Error(), "no stack named") {
				continue
			}
			return nil, m.classify(ctx, err, "read tags of stack %s", s.Name)
		}
		sum.Tags = tags
		out = append(out, sum)
	}
	slices.SortFunc(out, func(a, b Summary) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// withStaleLockRecovery runs op; when it fails because the stack is locked and every lock
// holder is a process of this host that no longer runs, it clears the locks (pulumi
// cancel) and runs op once more. A lock held by a live process is left alone.
func withStaleLockRecovery[T any](ctx context.Context, stack auto.Stack, l *slog.Logger, op func() (T, error)) (T, error) {
	res, err := op()
	if err == nil || !auto.IsConcurrentUpdateError(err) || ctx.Err() != nil {
		return res, err
	}
	if !lockIsStale(err.Error()) {
		return res, err
	}
	l.Warn("clearing stale stack lock", "phase", "recover")
	if cerr := stack.Cancel(ctx); cerr != nil {
		return res, errors.Join(err, cerr)
	}
	return op()
}

var lockHolderPattern = regexp.MustCompile(`created by \S*@(\S+) \(pid (\d+)\)`)

// lockIsStale reports whether the diy backend's lock message names only holders on this
// host whose processes are gone.
func lockIsStale(msg string) bool {
	holders := lockHolderPattern.FindAllStringSubmatch(msg, -1)
	if len(holders) == 0 {
		return false
	}
	host, err := os.Hostname()
	if err != nil {
		return false
	}
	for _, h := range holders {
		pid, err := strconv.Atoi(h[2])
		if err != nil || h[1] != host || processAlive(pid) {
			return false
		}
	}
	return true
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return syscall.Kill(pid, 0) == nil
	}
	if i := bytes.LastIndexByte(data, ')'); i >= 0 && i+2 < len(data) {
		switch data[i+2] {
		case 'Z', 'X', 'x':
			return false
		}
	}
	return true
}

// dropPendingOperations removes the pending operations an interrupted update left in the
// stack's state (the documented export / edit / import repair). Pending deletes and
// updates concern resources still in state, which the destroy then deletes; a pending
// create may have made a resource the state does not know, so each is logged.
func (m *Manager) dropPendingOperations(ctx context.Context, stack auto.Stack, l *slog.Logger) error {
	dep, err := stack.Export(ctx)
	if err != nil {
		return m.classify(ctx, err, "export stack %s", stack.Name())
	}
	if len(dep.Deployment) == 0 {
		return nil
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(dep.Deployment, &doc); err != nil {
		return job.Wrap(job.CodeInternal, err, "read state of stack %s", stack.Name())
	}
	raw, ok := doc["pending_operations"]
	if !ok {
		return nil
	}
	var ops []struct {
		Type     string `json:"type"`
		Resource struct {
			URN  string `json:"urn"`
			Type string `json:"type"`
		} `json:"resource"`
	}
	if err := json.Unmarshal(raw, &ops); err != nil {
		return job.Wrap(job.CodeInternal, err, "read pending operations of stack %s", stack.Name())
	}
	if len(ops) == 0 {
		return nil
	}
	for _, op := range ops {
		l.Warn("dropping pending operation of an interrupted update", "phase", "recover",
			"operation", op.Type, "urn", op.Resource.URN, "resource_type", op.Resource.Type,
			"note", "a pending create may have left a resource the stack does not track")
	}
	delete(doc, "pending_operations")
	edited, err := json.Marshal(doc)
	if err != nil {
		return job.Wrap(job.CodeInternal, err, "edit state of stack %s", stack.Name())
	}
	_, err = withStaleLockRecovery(ctx, stack, l, func() (struct{}, error) {
		return struct{}{}, stack.Import(ctx, apitype.UntypedDeployment{Version: dep.Version, Deployment: edited})
	})
	if err != nil {
		return m.classify(ctx, err, "import repaired state of stack %s", stack.Name())
	}
	return nil
}

// classify wraps err with the code callers branch on. A provider's failure that names its
// reason (a marker in the engine's diagnostics, such as no GPU capacity or a bad API key)
// gets that reason, and the message loses the marker.
func (m *Manager) classify(ctx context.Context, err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if reason, cleaned := cloudapi.ParseMarker(msg); reason != "" {
		if code, ok := providerReasons[reason]; ok && ctx.Err() == nil {
			return &job.Error{Code: code, Reason: string(reason), Message: cleaned, Err: err}
		}
		format, args = "%s", []any{cleaned}
	}
	var jerr *job.Error
	switch {
	case errors.As(err, &jerr):
		return err
	case ctx.Err() != nil:
		return job.Wrap(job.CodeCanceled, err, format+": canceled", args...)
	case auto.IsConcurrentUpdateError(err):
		return job.Wrap(job.CodeUnavailable, err, format+": another update holds the stack's lock", args...)
	case auto.IsCompilationError(err), auto.IsRuntimeError(err):
		return job.Wrap(job.CodeInternal, err, format+": the program failed", args...)
	}
	return job.Wrap(job.CodeUnavailable, err, format, args...)
}

// providerReasons are the providers' failure reasons that reach users as job error codes,
// with the code each implies.
var providerReasons = map[cloudapi.Reason]job.Code{
	cloudapi.ReasonNoCapacity: job.CodeResourceExhausted,
	cloudapi.ReasonQuota:      job.CodeResourceExhausted,
	cloudapi.ReasonAuth:       job.CodeFailedPrecondition,
}

// plainOutputs drops the secret markers of stack outputs; no contract output is secret.
func plainOutputs(outs auto.OutputMap) map[string]any {
	m := make(map[string]any, len(outs))
	for k, v := range outs {
		m[k] = v.Value
	}
	return m
}

// redactURL hides credentials in a backend URL before it is logged.
func redactURL(u string) string {
	if i := strings.Index(u, "@"); i >= 0 {
		if j := strings.Index(u, "://"); j >= 0 && j < i {
			return u[:j+3] + "****" + u[i:]
		}
	}
	return u
}

// lineWriter hands complete lines to a callback.
type lineWriter struct {
	mu  sync.Mutex
	fn  func(string)
	buf []byte
}

// diagnostics keeps the engine's last error lines, which name what went wrong (the provider
// writes them for people), so that a failed update's message can carry them.
type diagnostics struct {
	mu    sync.Mutex
	lines []string
}

func (d *diagnostics) tee(next func(string)) func(string) {
	return func(line string) {
		if t := strings.TrimSpace(line); strings.HasPrefix(t, "error:") && !strings.Contains(t, "update failed") {
			d.mu.Lock()
			d.lines = append(d.lines, strings.TrimSpace(strings.TrimPrefix(t, "error:")))
			if len(d.lines) > 3 {
				d.lines = d.lines[1:]
			}
			d.mu.Unlock()
		}
		if next != nil {
			next(line)
		}
	}
}

// suffix is ": <last error lines>" or "".
func (d *diagnostics) suffix() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.lines) == 0 {
		return ""
	}
	return ": " + strings.Join(d.lines, "; ")
}

func newLineWriter(fn func(string)) *lineWriter { return &lineWriter{fn: fn} }

func (w *lineWriter) Write(p []byte) (int, error) {
	if w.fn == nil {
		return len(p), nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.fn(strings.TrimRight(string(w.buf[:i]), "\r"))
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// Flush hands over a last line that has no newline.
func (w *lineWriter) Flush() {
	if w.fn == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.fn(strings.TrimRight(string(w.buf), "\r"))
		w.buf = nil
	}
}
