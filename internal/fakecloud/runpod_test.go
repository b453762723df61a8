package fakecloud

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/provider/sshd"
)

const rtx4090 = "NVIDIA GeForce RTX 4090"

// podRequiredFields are the fields RunPod's Pod schema marks required.
var podRequiredFields = []string{
	"id", "name", "status", "actions", "image", "args", "disk", "mounts", "ports", "env",
	"registry", "cloud", "dataCenterId", "cudaVersion", "ssh", "template", "cost", "locked",
	"runtime", "createdAt", "startedAt", "globalNetworking",
}

// podBody is a create body for a pod reachable over direct SSH with job and host keys.
func podBody(name string, job, host keyPair, extraEnv map[string]string) map[string]any {
	env := map[string]string{
		"PUBLIC_KEY":          job.authorized,
		"UNDERSTUDY_HOST_KEY": base64.StdEncoding.EncodeToString([]byte(host.pem)),
	}
	for k, v := range extraEnv {
		env[k] = v
	}
	return map[string]any{
		"name": name, "image": "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2204",
		"gpu":   map[string]any{"id": rtx4090, "count": 1},
		"cloud": "SECURE", "ports": []string{"22/tcp"}, "env": env, "disk": 20,
		"args": "bash -c 'echo this must never run on the host; exit 1'",
	}
}

func (f *fake) createPod(body any) map[string]any {
	f.t.Helper()
	r := f.call(http.MethodPost, "/v2/pods", body)
	if r.status != http.StatusCreated {
		f.t.Fatalf("POST /v2/pods: %d %s", r.status, r.body)
	}
	return r.json(f.t)
}

func (f *fake) getPod(id string) (int, map[string]any) {
	f.t.Helper()
	r := f.call(http.MethodGet, "/v2/pods/"+id, nil)
	if r.status != http.StatusOK {
		return r.status, nil
	}
	return r.status, r.json(f.t)
}

// waitPodStatus polls GET /v2/pods/{id} until the pod has status and returns it.
func (f *fake) waitPodStatus(id, status string, timeout time.Duration) map[string]any {
	f.t.Helper()
	var pod map[string]any
	eventually(f.t, timeout, "pod "+id+" "+status, func() bool {
		code, p := f.getPod(id)
		if code != http.StatusOK {
			f.t.Fatalf("GET pod %s: %d", id, code)
		}
		pod = p
		return p["status"] == status
	})
	return pod
}

// directAddr is the pod's ssh.direct address.
func directAddr(t *testing.T, pod map[string]any) string {
	t.Helper()
	host, _ := dig(pod, "ssh", "direct", "host").(string)
	port, _ := dig(pod, "ssh", "direct", "port").(float64)
	if host == "" || port == 0 {
		t.Fatalf("no ssh.direct in %v", pod["ssh"])
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

func TestRunPodLifecycle(t *testing.T) {
	t.Parallel()
	f := startFake(t, Config{Provider: RunPod})
	job, host := newKeyPair(t), newKeyPair(t)

	created := f.createPod(podBody("train-1", job, host, nil))
	for _, k := range podRequiredFields {
		if _, ok := created[k]; !ok {
			t.Errorf("created pod lacks required field %q", k)
		}
	}
	id, _ := created["id"].(string)
	if created["status"] != "PROVISIONING" || created["runtime"] != nil || dig(created, "ssh", "direct") != nil {
		t.Errorf("created pod = status %v runtime %v direct %v, want PROVISIONING, null, null", created["status"], created["runtime"], dig(created, "ssh", "direct"))
	}
	if got := created["actions"]; fmt.Sprint(got) != "[stop terminate]" {
		t.Errorf("PROVISIONING actions = %v", got)
	}

	pod := f.waitPodStatus(id, "RUNNING", 15*time.Second)
	if pod["cost"] != 0.69 || pod["startedAt"] == nil || pod["runtime"] == nil {
		t.Errorf("running pod: cost %v startedAt %v runtime %v", pod["cost"], pod["startedAt"], pod["runtime"])
	}
	if _, err := time.Parse(time.RFC3339, pod["createdAt"].(string)); err != nil {
		t.Errorf("createdAt: %v", err)
	}
	addr := directAddr(t, pod)
	out, err := sshRun(t, addr, host.signer.PublicKey(), job.signer, "echo ok; test ! -e /this-fake-never-ran-args")
	if err != nil || strings.TrimSpace(out) != "ok" {
		t.Fatalf("ssh echo ok: %q, %v", out, err)
	}
	if _, err := sshRun(t, addr, host.signer.PublicKey(), newKeyPair(t).signer, "true"); err == nil {
		t.Error("a key the create did not carry logged in")
	}
	if _, err := sshRun(t, addr, newKeyPair(t).signer.PublicKey(), job.signer, "true"); err == nil {
		t.Error("the client accepted a host key other than the injected one")
	}
	m := f.fakeMachine(id)
	if !m.HostKeyInjected || len(m.AuthorizedKeys) != 1 || m.Interruptible || m.SSHDPID == 0 {
		t.Errorf("fake machine = %+v", m)
	}
	if r := f.call(http.MethodGet, "/v2/pods", nil); r.status != http.StatusOK || !strings.Contains(string(r.body), id) {
		t.Errorf("GET /v2/pods: %d %s", r.status, r.body)
	}

	// stop: EXITED, billed no more, unreachable; start: running again with the same host key.
	if out, err := sshRun(t, addr, host.signer.PublicKey(), job.signer, detachedSleep); err != nil {
		t.Fatalf("start detached work: %q %v", out, err)
	}
	r := f.call(http.MethodPost, "/v2/pods/"+id+"/action", map[string]string{"action": "stop"})
	if r.status != http.StatusOK || r.json(t)["status"] != "EXITED" {
		t.Fatalf("stop: %d %s", r.status, r.body)
	}
	eventually(t, 15*time.Second, "sshd and session processes to end on stop", func() bool {
		return sshd.ProcessGone(m.SSHDPID) && !tagged(m.Dir)
	})
	_, stopped := f.getPod(id)
	if stopped["cost"] != 0.0 || stopped["runtime"] != nil || dig(stopped, "ssh", "direct") != nil {
		t.Errorf("stopped pod: cost %v runtime %v direct %v", stopped["cost"], stopped["runtime"], dig(stopped, "ssh", "direct"))
	}
	if r := f.call(http.MethodPost, "/v2/pods/"+id+"/action", map[string]string{"action": "stop"}); r.status != http.StatusConflict {
		t.Errorf("stop an EXITED pod: %d %s, want 409", r.status, r.body)
	}
	if r := f.call(http.MethodPost, "/v2/pods/"+id+"/action", map[string]string{"action": "start"}); r.status != http.StatusOK {
		t.Fatalf("start: %d %s", r.status, r.body)
	}
	pod = f.waitPodStatus(id, "RUNNING", 15*time.Second)
	addr = directAddr(t, pod)
	if out, err := sshRun(t, addr, host.signer.PublicKey(), job.signer, detachedSleep); err != nil {
		t.Fatalf("ssh after start: %q %v", out, err)
	}
	m = f.fakeMachine(id)

	// delete: 204, gone from the API at once, sshd and its work end, dir removed.
	if r := f.call(http.MethodDelete, "/v2/pods/"+id, nil); r.status != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("DELETE: %d %q", r.status, r.body)
	}
	if code, _ := f.getPod(id); code != http.StatusNotFound {
		t.Errorf("GET deleted pod: %d, want 404", code)
	}
	if r := f.call(http.MethodDelete, "/v2/pods/"+id, nil); r.status != http.StatusNotFound {
		t.Errorf("DELETE deleted pod: %d, want 404", r.status)
	}
	if r := f.call(http.MethodGet, "/v2/pods", nil); strings.Contains(string(r.body), id) {
		t.Errorf("deleted pod still listed: %s", r.body)
	}
	eventually(t, 15*time.Second, "sshd, session processes and dir to go", func() bool {
		return sshd.ProcessGone(m.SSHDPID) && !tagged(m.Dir) && !exists(m.Dir)
	})
	if ms, _ := f.fakeMachines(); len(ms) != 0 {
		t.Errorf("fake machines after delete: %+v", ms)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func TestRunPodWithoutInjectedKeyOrSSHPort(t *testing.T) {
	t.Parallel()
	f := startFake(t, Config{Provider: RunPod})
	job := newKeyPair(t)
	body := map[string]any{
		"name": "no-ssh-port", "image": "img", "gpu": map[string]any{"id": "NVIDIA H100 80GB HBM3", "count": 2},
		"cloud": "COMMUNITY", "env": map[string]string{"PUBLIC_KEY": job.authorized},
	}
	id := f.createPod(body)["id"].(string)
	pod := f.waitPodStatus(id, "RUNNING", 15*time.Second)
	if dig(pod, "ssh", "direct") != nil {
		t.Errorf("ssh.direct without 22/tcp: %v", dig(pod, "ssh", "direct"))
	}
	if ports := dig(pod, "runtime", "ports").([]any); len(ports) != 0 {
		t.Errorf("runtime.ports without 22/tcp: %v", ports)
	}
	if pod["cost"] != 5.38 || pod["cloud"] != "COMMUNITY" {
		t.Errorf("cost %v cloud %v, want 2 x 2.69 COMMUNITY", pod["cost"], pod["cloud"])
	}
	if m := f.fakeMachine(id); m.HostKeyInjected {
		t.Errorf("host key injected without UNDERSTUDY_HOST_KEY: %+v", m)
	}
	if r := f.call(http.MethodPost, "/v2/pods/"+id+"/action", map[string]string{"action": "terminate"}); r.status != http.StatusNoContent {
		t.Errorf("terminate action: %d %s", r.status, r.body)
	}
	if code, _ := f.getPod(id); code != http.StatusNotFound {
		t.Errorf("GET terminated pod: %d", code)
	}
}

func TestRunPodCreateValidation(t *testing.T) {
	t.Parallel()
	f := startFake(t, Config{Provider: RunPod})
	valid := func() map[string]any {
		return map[string]any{"name": "v", "image": "img", "gpu": map[string]any{"id": rtx4090}}
	}
	tests := []struct {
		name   string
		edit   func(map[string]any)
		raw    string
		status int
		want   string // in the body
	}{
		{"unknown field", func(b map[string]any) { b["bogus"] = 1 }, "", 422, `$: additional properties 'bogus' not allowed`},
		{"interruptible is v1 only", func(b map[string]any) { b["interruptible"] = true }, "", 422, `'interruptible' not allowed`},
		{"unknown gpu field", func(b map[string]any) { b["gpu"].(map[string]any)["memory"] = 24 }, "", 422, `$.gpu: additional properties 'memory' not allowed`},
		{"no name", func(b map[string]any) { delete(b, "name") }, "", 422, `missing property 'name'`},
		{"no image", func(b map[string]any) { delete(b, "image") }, "", 422, `missing property 'image'`},
		{"disk as string", func(b map[string]any) { b["disk"] = "20" }, "", 422, `$.disk: expected integer`},
		{"env not strings", func(b map[string]any) { b["env"] = map[string]any{"A": 1} }, "", 422, `$.env.A: expected string`},
		{"bad cloud", func(b map[string]any) { b["cloud"] = "SPOT" }, "", 422, `$.cloud`},
		{"zero gpus", func(b map[string]any) { b["gpu"].(map[string]any)["count"] = 0 }, "", 422, `$.gpu.count`},
		{"unknown gpu", func(b map[string]any) { b["gpu"] = map[string]any{"id": "NVIDIA B300"} }, "", 400, `NVIDIA B300`},
		{"no gpu", func(b map[string]any) { delete(b, "gpu") }, "", 400, `exactly one of gpu or cpu`},
		{"two cuda rules", func(b map[string]any) {
			b["gpu"] = map[string]any{"id": rtx4090, "allowedCudaVersions": []string{"12.8"}, "minCudaVersion": "12.1"}
		}, "", 400, `mutually exclusive`},
		{"template", func(b map[string]any) { b["templateId"] = "abc" }, "", 404, `abc`},
		{"not JSON", nil, `{"name":`, 400, `not valid JSON`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body any = tt.raw
			if tt.edit != nil {
				b := valid()
				tt.edit(b)
				body = b
			}
			r := f.call(http.MethodPost, "/v2/pods", body)
			if r.status != tt.status || !strings.Contains(string(r.body), tt.want) {
				t.Errorf("got %d %s, want %d containing %q", r.status, r.body, tt.status, tt.want)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("Content-Type %q", ct)
			}
			p := r.json(t)
			if p["title"] == nil || p["status"] != float64(tt.status) || p["detail"] == nil {
				t.Errorf("not a problem body: %s", r.body)
			}
		})
	}
	if s := f.stats(); s.Creates != 0 {
		t.Errorf("creates = %d after invalid bodies", s.Creates)
	}
}

func TestRunPodCatalogAndErrors(t *testing.T) {
	t.Parallel()
	f := startFake(t, Config{Provider: RunPod})
	r := f.call(http.MethodGet, "/v2/catalog/gpus", nil)
	var list struct{ GPUs []map[string]any }
	if err := json.Unmarshal(r.body, &list); err != nil || r.status != http.StatusOK || len(list.GPUs) < 3 {
		t.Fatalf("GET /v2/catalog/gpus: %d %s", r.status, r.body)
	}
	r = f.call(http.MethodGet, "/v2/catalog/gpus/NVIDIA%20GeForce%20RTX%204090?include=AVAILABILITY&product=POD", nil)
	g := r.json(t)
	if r.status != http.StatusOK || g["id"] != rtx4090 || dig(g, "price", "secure") != 0.69 || dig(g, "price", "community") != 0.34 || g["availability"] != "HIGH" {
		t.Errorf("GET RTX 4090: %d %s", r.status, r.body)
	}
	if r := f.call(http.MethodGet, "/v2/catalog/gpus/NVIDIA%20A100%2080GB%20PCIe", nil); r.json(t)["memory"] != 80.0 || r.json(t)["availability"] != nil {
		t.Errorf("GET A100: %s", r.body)
	}
	if r := f.call(http.MethodGet, "/v2/catalog/gpus/nope", nil); r.status != http.StatusNotFound {
		t.Errorf("unknown GPU: %d", r.status)
	}
	if r := f.call(http.MethodGet, "/v2/catalog/gpus?include=AVAILABILITY", nil); r.status != http.StatusBadRequest {
		t.Errorf("include without product: %d", r.status)
	}
	if r := f.call(http.MethodGet, "/v2/pods/nope", nil); r.status != http.StatusNotFound || r.json(t)["title"] != "Not Found" {
		t.Errorf("unknown pod: %d %s", r.status, r.body)
	}
	if r := f.call(http.MethodPost, "/v2/pods/nope/action", map[string]string{"action": "reboot"}); r.status != http.StatusUnprocessableEntity {
		t.Errorf("bad action: %d %s", r.status, r.body)
	}
	bad := f.callWith(http.MethodGet, f.base+"/v2/pods", nil, func(r *http.Request) { r.Header.Set("Authorization", "Bearer wrong") })
	if bad.status != http.StatusUnauthorized || bad.json(t)["title"] != "Unauthorized" {
		t.Errorf("wrong key: %d %s", bad.status, bad.body)
	}
	if none := f.callWith(http.MethodGet, f.base+"/v2/pods", nil, nil); none.status != http.StatusUnauthorized {
		t.Errorf("no key: %d", none.status)
	}
	s := f.stats()
	if s.Requests["GET /v2/pods"] != 2 || s.Statuses["401"] != 2 || s.Statuses["404"] < 2 {
		t.Errorf("stats = %+v", s)
	}
}

func TestRunPodLeaseAndDeadline(t *testing.T) {
	t.Parallel()
	f := startFake(t, Config{Provider: RunPod})
	job, host := newKeyPair(t), newKeyPair(t)
	leaseFile := filepath.Join(f.srv.Dir(), "never-written-lease")
	leased := f.createPod(podBody("leased", job, host, map[string]string{
		"UNDERSTUDY_LEASE_FILE": leaseFile, "UNDERSTUDY_LEASE_SECONDS": "1", "UNDERSTUDY_DEADLINE": "0",
	}))["id"].(string)
	deadline := f.createPod(podBody("deadline", job, host, map[string]string{
		"UNDERSTUDY_DEADLINE": strconv.FormatInt(time.Now().Add(2*time.Second).Unix(), 10),
	}))["id"].(string)
	for id, reason := range map[string]string{leased: "lease expired", deadline: "deadline reached"} {
		var m fakeMachine
		eventually(t, 20*time.Second, id+" to power off", func() bool {
			m = f.fakeMachine(id)
			return m.Status == "EXITED"
		})
		if m.StoppedReason != reason {
			t.Errorf("%s stopped for %q, want %q", id, m.StoppedReason, reason)
		}
		_, pod := f.getPod(id)
		if pod["cost"] != 0.0 || pod["runtime"] != nil || dig(pod, "ssh", "direct") != nil {
			t.Errorf("powered-off pod: %v", pod)
		}
		eventually(t, 15*time.Second, "sshd to end", func() bool { return !tagged(m.Dir) && f.fakeMachine(id).SSHDPID == 0 })
	}
	if m := f.fakeMachine(leased); m.LeaseFile != leaseFile || m.LeaseSeconds != 1 {
		t.Errorf("lease settings = %+v", m)
	}
}

func TestRunPodFaultCreate500ButCreated(t *testing.T) {
	t.Parallel()
	f := startFake(t, Config{Provider: RunPod, Faults: Faults{CreateFailsButCreates: true}})
	job, host := newKeyPair(t), newKeyPair(t)
	r := f.call(http.MethodPost, "/v2/pods", podBody("leaky", job, host, nil))
	if r.status != http.StatusInternalServerError || r.header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	gql := f.call(http.MethodPost, "/graphql", rentRequest(map[string]any{"name": "leaky-spot"}))
	if gql.status != http.StatusInternalServerError {
		t.Errorf("GraphQL create: %d %s", gql.status, gql.body)
	}
	var list struct{ Pods []map[string]any }
	_ = json.Unmarshal(f.call(http.MethodGet, "/v2/pods", nil).body, &list)
	var names []string
	for _, p := range list.Pods {
		names = append(names, p["name"].(string))
	}
	slices.Sort(names)
	if fmt.Sprint(names) != "[leaky leaky-spot]" || f.stats().Creates != 2 {
		t.Errorf("pods after failed creates = %v, creates %d", names, f.stats().Creates)
	}
}

func TestRunPodFaultNoCapacity(t *testing.T) {
	t.Parallel()
	f := startFake(t, Config{Provider: RunPod, Faults: Faults{NoCapacity: true}})
	job, host := newKeyPair(t), newKeyPair(t)
	r := f.call(http.MethodPost, "/v2/pods", podBody("none", job, host, nil))
	if r.status != http.StatusBadRequest || r.json(t)["detail"] != noCapacityDetail {
		t.Errorf("create: %d %s", r.status, r.body)
	}
	g := f.call(http.MethodGet, "/v2/catalog/gpus/NVIDIA%20GeForce%20RTX%204090?include=AVAILABILITY&product=POD", nil).json(t)
	if g["availability"] != "NONE" || g["dataCenters"] != nil {
		t.Errorf("catalogue under no-capacity: %v", g)
	}
	types := f.call(http.MethodPost, "/graphql", gpuTypesRequest()).json(t)
	if s := dig(types["data"].(map[string]any)["gpuTypes"].([]any)[0], "lowestPrice", "stockStatus"); s != "None" {
		t.Errorf("stockStatus = %v", s)
	}
	rent := f.call(http.MethodPost, "/graphql", rentRequest(nil))
	if rent.status != http.StatusOK || !strings.Contains(string(rent.body), noCapacityDetail) || rent.json(t)["data"] != nil {
		t.Errorf("spot create: %d %s", rent.status, rent.body)
	}
	if f.stats().Creates != 0 {
		t.Error("a machine was made without capacity")
	}
}

func TestRunPodFaultRateLimit(t *testing.T) {
	t.Parallel()
	f := startFake(t, Config{Provider: RunPod, Faults: Faults{RateLimit: true}})
	var statuses []int
	for range 4 {
		r := f.call(http.MethodGet, "/v2/catalog/gpus", nil)
		statuses = append(statuses, r.status)
		if r.status == http.StatusTooManyRequests {
			if r.header.Get("Retry-After") != "1" || r.json(t)["status"] != 429.0 {
				t.Errorf("429 answer: %v %s", r.header, r.body)
			}
		}
		f.fakeMachines() // never limited, never counted
	}
	if fmt.Sprint(statuses) != "[200 429 200 429]" {
		t.Errorf("statuses = %v", statuses)
	}
	if s := f.stats(); s.Statuses["429"] != 2 || s.Requests["GET /v2/catalog/gpus"] != 4 {
		t.Errorf("stats = %+v", s)
	}
}

func TestRunPodFaultAuth(t *testing.T) {
	t.Parallel()
	f := startFake(t, Config{Provider: RunPod, Faults: Faults{Auth: true}})
	r := f.call(http.MethodGet, "/v2/pods", nil)
	if r.status != http.StatusUnauthorized || r.json(t)["title"] != "Unauthorized" {
		t.Errorf("REST: %d %s", r.status, r.body)
	}
	if r := f.call(http.MethodPost, "/graphql", gpuTypesRequest()); r.status != http.StatusUnauthorized {
		t.Errorf("GraphQL: %d %s", r.status, r.body)
	}
}

func TestRunPodFaultSlowDelete(t *testing.T) {
	t.Parallel()
	f := startFake(t, Config{Provider: RunPod, Faults: Faults{SlowDelete: true}, SlowDelete: 2 * time.Second})
	job, host := newKeyPair(t), newKeyPair(t)
	id := f.createPod(podBody("slow", job, host, nil))["id"].(string)
	pod := f.waitPodStatus(id, "RUNNING", 15*time.Second)
	m := f.fakeMachine(id)
	if r := f.call(http.MethodDelete, "/v2/pods/"+id, nil); r.status != http.StatusNoContent {
		t.Fatalf("DELETE: %d", r.status)
	}
	if code, p := f.getPod(id); code != http.StatusOK || p["status"] != "RUNNING" {
		t.Errorf("right after DELETE: %d %v", code, p)
	}
	if out, err := sshRun(t, directAddr(t, pod), host.signer.PublicKey(), job.signer, "echo ok"); err != nil {
		t.Errorf("ssh during slow delete: %q %v", out, err)
	}
	eventually(t, 20*time.Second, "the pod to go", func() bool {
		code, _ := f.getPod(id)
		return code == http.StatusNotFound
	})
	eventually(t, 15*time.Second, "sshd to end", func() bool { return sshd.ProcessGone(m.SSHDPID) })
}

// TestNewReapsStaleMachines: a fake started on the directory of one that died without
// Close ends the machines it left, which nobody could delete through the API any more.
func TestNewReapsStaleMachines(t *testing.T) {
	t.Parallel()
	old := startFake(t, Config{Provider: RunPod})
	job, host := newKeyPair(t), newKeyPair(t)
	id := old.createPod(podBody("stale", job, host, nil))["id"].(string)
	old.waitPodStatus(id, "RUNNING", 15*time.Second)
	m := old.fakeMachine(id)

	var srv *Server
	t.Cleanup(func() {
		if srv != nil {
			_ = srv.Close(context.Background())
		}
	})
	var err error
	if srv, err = New(Config{Provider: RunPod, Dir: old.srv.Dir(), Logger: testLogger(t)}); err != nil {
		t.Fatalf("New on a used dir: %v", err)
	}
	if !sshd.ProcessGone(m.SSHDPID) || exists(m.Dir) {
		t.Errorf("stale machine left: sshd gone %v, dir exists %v", sshd.ProcessGone(m.SSHDPID), exists(m.Dir))
	}
}
