package stacks_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/programs/programtest"
	"github.com/understudy-ai/training-service/provider/version"
	"github.com/understudy-ai/training-service/sshrunner"
	"github.com/understudy-ai/training-service/stacks"
)

func TestUpSSHDestroy(t *testing.T) {
	requireEngine(t)
	t.Parallel()
	ctx := t.Context()
	data := t.TempDir()
	m := newManager(t, data)
	base := workerBaseDir(t)
	k := programtest.NewKeys(t)
	const id = "tr-up-1"
	destroyOnCleanup(t, m, id)

	var lines []string
	var mu sync.Mutex
	out, err := m.Up(ctx, localSpec(t, id, k, base), func(line string) {
		mu.Lock()
		lines = append(lines, line)
		mu.Unlock()
	})
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	// The update may still be streaming: it goes on after the machine is reported.
	mu.Lock()
	seen := slices.Clone(lines)
	mu.Unlock()
	if len(seen) == 0 {
		t.Error("Up streamed no progress lines")
	}
	for _, l := range seen {
		if strings.Contains(l, "PRIVATE KEY") {
			t.Errorf("progress leaks the host key: %q", l)
		}
	}
	if out.Host != "127.0.0.1" || out.Port <= 0 || out.User == "" || out.InstanceID == "" || out.GPU == "" || out.HourlyPrice != 0 {
		t.Errorf("outputs = %+v", out)
	}
	if !strings.HasPrefix(out.WorkDir, base+"/") {
		t.Errorf("workDir %q is not under %q", out.WorkDir, base)
	}
	// The host private key is in the state only encrypted.
	state, err := os.ReadFile(filepath.Join(data, "pulumi", ".pulumi", "stacks", stacks.Project, id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	keyBody := strings.Split(strings.TrimSpace(k.HostPrivateKey), "\n")[1]
	if strings.Contains(string(state), "PRIVATE KEY") || strings.Contains(string(state), keyBody) {
		t.Error("the stack's state holds the host private key in the clear")
	}
	if !strings.Contains(string(state), "4dabf18193072939515e22adb298388d") {
		t.Error("the stack's state has no secret value; want hostPrivateKey encrypted")
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(out.HostKey))
	if err != nil {
		t.Fatalf("hostKey output: %v", err)
	}
	if string(hostKey.Marshal()) != string(k.HostKey.Marshal()) {
		t.Fatal("hostKey output is not the public half of the job's host key")
	}

	// The pinned key logs in; a client pinning another host key is refused.
	other := programtest.NewKeys(t)
	target := func(hostKey string) sshrunner.Target {
		return sshrunner.Target{Host: out.Host, Port: out.Port, User: out.User, HostKey: hostKey, Signer: k.JobSigner}
	}
	if c, err := sshrunner.Dial(ctx, target(other.HostPublicKey), nil); err == nil {
		c.Close()
		t.Fatal("connected although the pinned host key differs")
	}
	c, err := sshrunner.Dial(ctx, target(out.HostKey), nil)
	if err != nil {
		t.Fatalf("ssh with the pinned host key: %v", err)
	}
	got, err := c.Run(ctx, "cd "+out.WorkDir+" && pwd")
	c.Close()
	if err != nil || strings.TrimSpace(string(got)) != out.WorkDir {
		t.Errorf("run in workDir: %q, %v", got, err)
	}

	// Outputs reads the same outputs back from the backend.
	again, err := m.Outputs(ctx, id)
	if err != nil {
		t.Fatalf("Outputs: %v", err)
	}
	if again != out {
		t.Errorf("Outputs = %+v, want %+v", again, out)
	}

	// A second Up with the same spec changes nothing and returns the same outputs.
	same, err := m.Up(ctx, localSpec(t, id, k, base), nil)
	if err != nil {
		t.Fatalf("second Up: %v", err)
	}
	if same != out {
		t.Errorf("second Up = %+v, want unchanged %+v", same, out)
	}

	if err := m.Destroy(ctx, id, nil); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if pids := sshdsUnder(base); len(pids) > 0 {
		t.Errorf("sshd %v still runs after Destroy", pids)
	}
	emptyDir(t, base)
	if conn, err := net.DialTimeout("tcp", net.JoinHostPort(out.Host, strconv.Itoa(out.Port)), time.Second); err == nil {
		conn.Close()
		t.Errorf("port %d still accepts after Destroy", out.Port)
	}
	if _, err := m.Outputs(ctx, id); job.CodeOf(err) != job.CodeNotFound {
		t.Errorf("Outputs after Destroy: %v, want code %q", err, job.CodeNotFound)
	}
	list, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Errorf("List after Destroy = %+v, want no stacks", list)
	}
	// Destroying a stack that is gone is success.
	if err := m.Destroy(ctx, id, nil); err != nil {
		t.Errorf("Destroy of a missing stack: %v", err)
	}
}

func TestDestroyAfterCancelledUp(t *testing.T) {
	requireEngine(t)
	t.Parallel()
	m := newManager(t, t.TempDir())
	base := workerBaseDir(t)
	k := programtest.NewKeys(t)
	const id = "tr-cancelled"
	destroyOnCleanup(t, m, id)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// Cancel while the engine creates the worker.
	_, err := m.Up(ctx, localSpec(t, id, k, base), func(line string) {
		if strings.Contains(line, programs.LocalWorkerType) && strings.Contains(line, "creating") {
			cancel()
		}
	})
	if err == nil {
		t.Log("Up finished before the cancellation reached it")
	} else if code := job.CodeOf(err); code != job.CodeCanceled {
		t.Errorf("cancelled Up: code %q (%v), want %q", code, err, job.CodeCanceled)
	}

	if err := m.Destroy(t.Context(), id, nil); err != nil {
		t.Fatalf("Destroy after a cancelled Up: %v", err)
	}
	if pids := sshdsUnder(base); len(pids) > 0 {
		t.Errorf("sshd %v still runs", pids)
	}
	emptyDir(t, base)
	if _, err := m.Outputs(t.Context(), id); job.CodeOf(err) != job.CodeNotFound {
		t.Errorf("Outputs after Destroy: %v, want code %q", err, job.CodeNotFound)
	}
}

// A crashed update leaves its lock file behind; Destroy must clear it when the process
// that holds it is gone, and must not when it runs.
func TestDestroyClearsStaleLock(t *testing.T) {
	requireEngine(t)
	t.Parallel()
	ctx := t.Context()
	data := t.TempDir()
	m := newManager(t, data)
	base := workerBaseDir(t)
	k := programtest.NewKeys(t)
	const id = "tr-locked"
	destroyOnCleanup(t, m, id)
	if _, err := m.Up(ctx, localSpec(t, id, k, base), nil); err != nil {
		t.Fatalf("Up: %v", err)
	}

	lockDir := filepath.Join(data, "pulumi", ".pulumi", "locks", "organization", stacks.Project, id)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	writeLock := func(name string, pid int) {
		t.Helper()
		if err := os.MkdirAll(lockDir, 0o700); err != nil {
			t.Fatal(err)
		}
		content, _ := json.Marshal(map[string]any{"pid": pid, "username": "root", "hostname": host, "timestamp": time.Now()})
		if err := os.WriteFile(filepath.Join(lockDir, name), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Held by a live process (this one): Destroy must refuse, as Unavailable.
	writeLock("11111111-live.json", os.Getpid())
	err = m.Destroy(ctx, id, nil)
	if code := job.CodeOf(err); code != job.CodeUnavailable {
		t.Fatalf("Destroy of a stack locked by a live process: %v, want code %q", err, job.CodeUnavailable)
	}
	if len(sshdsUnder(base)) == 0 {
		t.Fatal("Destroy removed the worker although the stack was locked")
	}
	os.Remove(filepath.Join(lockDir, "11111111-live.json"))

	// Held by a process that is gone: Destroy clears it.
	writeLock("22222222-dead.json", deadPID(t))
	if err := m.Destroy(ctx, id, nil); err != nil {
		t.Fatalf("Destroy of a stack with a stale lock: %v", err)
	}
	if pids := sshdsUnder(base); len(pids) > 0 {
		t.Errorf("sshd %v still runs", pids)
	}
	emptyDir(t, base)
}

// deadPID returns the pid of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	return p.Pid
}

// Interrupted updates leave pending operations in the state; Destroy drops them.
func TestDestroyDropsPendingOperations(t *testing.T) {
	requireEngine(t)
	t.Parallel()
	ctx := t.Context()
	data := t.TempDir()
	m := newManager(t, data)
	base := workerBaseDir(t)
	k := programtest.NewKeys(t)
	const id = "tr-pending"
	destroyOnCleanup(t, m, id)
	if _, err := m.Up(ctx, localSpec(t, id, k, base), nil); err != nil {
		t.Fatalf("Up: %v", err)
	}
	// Mark the worker as being deleted when the update was interrupted, as the engine
	// records it in the checkpoint.
	checkpoint := filepath.Join(data, "pulumi", ".pulumi", "stacks", stacks.Project, id+".json")
	raw, err := os.ReadFile(checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	latest := doc["checkpoint"].(map[string]any)["latest"].(map[string]any)
	var worker map[string]any
	for _, r := range latest["resources"].([]any) {
		if r.(map[string]any)["type"] == programs.LocalWorkerType {
			worker = r.(map[string]any)
		}
	}
	if worker == nil {
		t.Fatal("no worker in the checkpoint")
	}
	latest["pending_operations"] = []any{map[string]any{"resource": worker, "type": "deleting"}}
	edited, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(checkpoint, edited, 0o600); err != nil {
		t.Fatal(err)
	}

	if err := m.Destroy(ctx, id, nil); err != nil {
		t.Fatalf("Destroy with pending operations: %v", err)
	}
	if pids := sshdsUnder(base); len(pids) > 0 {
		t.Errorf("sshd %v still runs", pids)
	}
	emptyDir(t, base)
}

func TestConcurrentJobsAndList(t *testing.T) {
	requireEngine(t)
	t.Parallel()
	ctx := t.Context()
	m := newManager(t, t.TempDir())
	base := workerBaseDir(t)
	ids := []string{"tr-par-a", "tr-par-b", "tr-par-c"}
	for _, id := range ids {
		destroyOnCleanup(t, m, id)
	}
	outs := make([]programs.Outputs, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			spec := localSpec(t, id, programtest.NewKeys(t), base)
			spec.EndpointID = "ep-" + id
			outs[i], errs[i] = m.Up(ctx, spec, nil)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent Up: %v", err)
	}
	ports := map[int]bool{}
	for _, o := range outs {
		ports[o.Port] = true
	}
	if len(ports) != len(ids) {
		t.Errorf("workers share ports: %+v", outs)
	}

	for _, id := range ids {
		m.Settle(id)
	}
	list, err := m.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var names []string
	for _, s := range list {
		names = append(names, s.Name)
		want := map[string]string{"train_id": s.Name, "endpoint_id": "ep-" + s.Name, "version": "v2", "provider": "local"}
		for k, v := range want {
			if s.Tags[k] != v {
				t.Errorf("stack %s tag %s = %q, want %q (tags %v)", s.Name, k, s.Tags[k], v, s.Tags)
			}
		}
		if s.ResourceCount < 2 {
			t.Errorf("stack %s resource count = %d, want the stack, its provider and the worker", s.Name, s.ResourceCount)
		}
		if s.LastUpdate.IsZero() || time.Since(s.LastUpdate) > time.Hour {
			t.Errorf("stack %s last update = %v", s.Name, s.LastUpdate)
		}
	}
	if !slices.Equal(names, ids) {
		t.Errorf("List names = %v, want %v", names, ids)
	}

	for i, id := range ids {
		wg.Go(func() { errs[i] = m.Destroy(ctx, id, nil) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent Destroy: %v", err)
	}
	if pids := sshdsUnder(base); len(pids) > 0 {
		t.Errorf("sshd %v still runs", pids)
	}
	emptyDir(t, base)
}

func TestUpRejectsInvalidSpec(t *testing.T) {
	requireEngine(t)
	t.Parallel()
	ctx := t.Context()
	m := newManager(t, t.TempDir())
	k := programtest.NewKeys(t)
	spec := localSpec(t, "tr-invalid", k, "relative/dir")
	if _, err := m.Up(ctx, spec, nil); job.CodeOf(err) != job.CodeInvalidArgument {
		t.Errorf("Up with a relative base dir: %v, want code %q", err, job.CodeInvalidArgument)
	}
	spec.Provider = "moon"
	if _, err := m.Up(ctx, spec, nil); job.CodeOf(err) != job.CodeInvalidArgument {
		t.Errorf("Up with an unknown provider: %v, want code %q", err, job.CodeInvalidArgument)
	}
	if _, err := m.Outputs(ctx, "tr-invalid"); job.CodeOf(err) != job.CodeNotFound {
		t.Errorf("Outputs of a stack never made: %v, want code %q", err, job.CodeNotFound)
	}
	if _, err := m.Outputs(ctx, "../etc"); job.CodeOf(err) != job.CodeInvalidArgument {
		t.Errorf("Outputs of a bad name: %v, want code %q", err, job.CodeInvalidArgument)
	}
	list, err := m.List(ctx)
	if err != nil || len(list) != 0 {
		t.Errorf("List = %+v, %v; want no stacks", list, err)
	}
}

func TestOpenInstallsPluginOnce(t *testing.T) {
	requireEngine(t)
	t.Parallel()
	data := t.TempDir()
	newManager(t, data)
	installed := filepath.Join(data, "pulumi-home", "plugins", "resource-understudy-v"+version.Version, "pulumi-resource-understudy")
	st1, err := os.Stat(installed)
	if err != nil {
		t.Fatalf("plugin not installed: %v", err)
	}
	newManager(t, data)
	st2, err := os.Stat(installed)
	if err != nil {
		t.Fatal(err)
	}
	if !st2.ModTime().Equal(st1.ModTime()) {
		t.Error("Open reinstalled an unchanged plugin")
	}
	// A changed plugin binary is reinstalled.
	if err := os.WriteFile(installed, []byte("stale"), 0o755); err != nil {
		t.Fatal(err)
	}
	newManager(t, data)
	got, err := os.ReadFile(installed)
	if err != nil || string(got) == "stale" {
		t.Errorf("Open kept a stale plugin: %v", err)
	}
	// The passphrase file Open made is owner-only.
	st, err := os.Stat(filepath.Join(data, "pulumi-passphrase"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("passphrase file: %v, %v", st, err)
	}
}

func TestOpenRefusesLoosePassphraseFile(t *testing.T) {
	requireEngine(t)
	t.Parallel()
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "pulumi-passphrase"), []byte("pw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := stacks.Open(t.Context(), stacks.Config{DataDir: data, PulumiBin: pulumiBin, PluginBin: pluginBin})
	if job.CodeOf(err) != job.CodeFailedPrecondition {
		t.Errorf("Open with a world-readable passphrase file: %v, want code %q", err, job.CodeFailedPrecondition)
	}
}
