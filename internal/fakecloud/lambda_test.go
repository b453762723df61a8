package fakecloud

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/provider/sshd"
)

var instanceIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// startLambda starts a Lambda fake whose instances listen on a free port.
func startLambda(t *testing.T, cfg Config) *fake {
	t.Helper()
	cfg.Provider = Lambda
	if cfg.SSHPort == 0 {
		cfg.SSHPort = freePort(t)
	}
	if cfg.LaunchInterval == 0 {
		cfg.LaunchInterval = time.Millisecond
	}
	return startFake(t, cfg)
}

// cloudConfig is user data as the service would send it: host key, another authorized key
// and the lease settings.
func cloudConfigFor(host keyPair, extraKey, leaseFile string, leaseSeconds int) string {
	indent := func(s string) string {
		return "    " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n    ")
	}
	lease := fmt.Sprintf("UNDERSTUDY_LEASE_FILE=%s\nUNDERSTUDY_LEASE_SECONDS=%d\nUNDERSTUDY_DEADLINE=0\n", leaseFile, leaseSeconds)
	return "#cloud-config\n" +
		"ssh_keys:\n  ed25519_private: |\n" + indent(host.pem) + "\n" +
		"ssh_authorized_keys:\n  - " + extraKey + "\n" +
		"write_files:\n" +
		"  - path: /etc/understudy/lease.env\n    permissions: '0600'\n    encoding: b64\n" +
		"    content: " + base64.StdEncoding.EncodeToString([]byte(lease)) + "\n" +
		"runcmd:\n  - [sh, -c, 'touch /this-must-never-run']\n"
}

func (f *fake) addKey(name, publicKey string) map[string]any {
	f.t.Helper()
	body := map[string]any{"name": name}
	if publicKey != "" {
		body["public_key"] = publicKey
	}
	r := f.call(http.MethodPost, "/ssh-keys", body)
	if r.status != http.StatusOK {
		f.t.Fatalf("POST /ssh-keys: %d %s", r.status, r.body)
	}
	return r.json(f.t)["data"].(map[string]any)
}

func launchBody(name, key, userData string) map[string]any {
	b := map[string]any{
		"region_name": "us-east-1", "instance_type_name": "gpu_1x_a10",
		"ssh_key_names": []string{key}, "file_system_names": []string{}, "quantity": 1, "name": name,
	}
	if userData != "" {
		b["user_data"] = userData
	}
	return b
}

func (f *fake) launch(body map[string]any) string {
	f.t.Helper()
	r := f.call(http.MethodPost, "/instance-operations/launch", body)
	if r.status != http.StatusOK {
		f.t.Fatalf("launch: %d %s", r.status, r.body)
	}
	ids := dig(r.json(f.t), "data", "instance_ids").([]any)
	if len(ids) != 1 || !instanceIDPattern.MatchString(ids[0].(string)) {
		f.t.Fatalf("instance_ids = %v", ids)
	}
	return ids[0].(string)
}

func (f *fake) instance(id string) (int, map[string]any) {
	f.t.Helper()
	r := f.call(http.MethodGet, "/instances/"+id, nil)
	if r.status != http.StatusOK {
		return r.status, r.json(f.t)
	}
	return r.status, r.json(f.t)["data"].(map[string]any)
}

func (f *fake) waitInstanceStatus(id, status string, timeout time.Duration) map[string]any {
	f.t.Helper()
	var inst map[string]any
	eventually(f.t, timeout, "instance "+id+" "+status, func() bool {
		code, in := f.instance(id)
		if code != http.StatusOK {
			f.t.Fatalf("GET instance %s: %d %v", id, code, in)
		}
		inst = in
		return in["status"] == status
	})
	return inst
}

func errorCode(v map[string]any) string {
	code, _ := dig(v, "error", "code").(string)
	return code
}

func TestLambdaLifecycle(t *testing.T) {
	t.Parallel()
	f := startLambda(t, Config{})
	f.srv.keepTerminated = 2 * time.Second
	job, host, other := newKeyPair(t), newKeyPair(t), newKeyPair(t)
	leaseFile := filepath.Join(f.srv.Dir(), "lease")

	key := f.addKey("job-key", job.authorized)
	if key["public_key"] != job.authorized || key["private_key"] != nil || !instanceIDPattern.MatchString(key["id"].(string)) {
		t.Errorf("added key = %v", key)
	}
	types := f.call(http.MethodGet, "/instance-types", nil).json(t)
	if dig(types, "data", "gpu_1x_a10", "instance_type", "price_cents_per_hour") != 75.0 ||
		len(dig(types, "data", "gpu_1x_a10", "regions_with_capacity_available").([]any)) != 2 {
		t.Errorf("instance types = %v", types)
	}

	id := f.launch(launchBody("train-1", "job-key", cloudConfigFor(host, other.authorized, leaseFile, 3600)))
	if _, in := f.instance(id); in["status"] != "booting" || in["ip"] != nil {
		t.Errorf("new instance: status %v ip %v", in["status"], in["ip"])
	}
	in := f.waitInstanceStatus(id, "active", 15*time.Second)
	ip, _ := in["ip"].(string)
	if !strings.HasPrefix(ip, "127.77.") || dig(in, "instance_type", "name") != "gpu_1x_a10" || dig(in, "region", "name") != "us-east-1" || in["name"] != "train-1" {
		t.Errorf("active instance = %v", in)
	}
	addr := net.JoinHostPort(ip, strconv.Itoa(f.srv.cfg.SSHPort))
	for _, k := range []keyPair{job, other} {
		if out, err := sshRun(t, addr, host.signer.PublicKey(), k.signer, "echo ok"); err != nil || strings.TrimSpace(out) != "ok" {
			t.Fatalf("ssh %s: %q %v", addr, out, err)
		}
	}
	if _, err := os.Stat("/this-must-never-run"); err == nil {
		t.Error("the fake ran the user data's runcmd")
	}
	m := f.fakeMachine(id)
	if !m.HostKeyInjected || len(m.AuthorizedKeys) != 2 || m.LeaseFile != leaseFile || m.LeaseSeconds != 3600 || m.SSHHost != ip {
		t.Errorf("fake machine = %+v", m)
	}
	if r := f.call(http.MethodGet, "/instances", nil); !strings.Contains(string(r.body), id) {
		t.Errorf("GET /instances: %s", r.body)
	}

	keyID := key["id"].(string)
	if r := f.call(http.MethodDelete, "/ssh-keys/"+keyID, nil); r.status != http.StatusBadRequest || errorCode(r.json(t)) != "ssh-keys/key-in-use" {
		t.Errorf("delete key in use: %d %s", r.status, r.body)
	}
	if out, err := sshRun(t, addr, host.signer.PublicKey(), job.signer, detachedSleep); err != nil {
		t.Fatalf("start detached work: %q %v", out, err)
	}
	r := f.call(http.MethodPost, "/instance-operations/terminate", map[string]any{"instance_ids": []string{id}})
	term := dig(r.json(t), "data", "terminated_instances").([]any)
	if r.status != http.StatusOK || len(term) != 1 || dig(term[0], "status") != "terminating" {
		t.Fatalf("terminate: %d %s", r.status, r.body)
	}
	f.waitInstanceStatus(id, "terminated", 15*time.Second)
	if r := f.call(http.MethodGet, "/instances", nil); strings.Contains(string(r.body), id) {
		t.Errorf("terminated instance still listed: %s", r.body)
	}
	eventually(t, 15*time.Second, "sshd and session processes to end", func() bool {
		return sshd.ProcessGone(m.SSHDPID) && !tagged(m.Dir) && !exists(m.Dir)
	})
	eventually(t, 10*time.Second, "GET of a terminated instance to answer 404", func() bool {
		code, body := f.instance(id)
		return code == http.StatusNotFound && errorCode(body) == "global/object-does-not-exist"
	})
	if r := f.call(http.MethodPost, "/instance-operations/terminate", map[string]any{"instance_ids": []string{id}}); r.status != http.StatusNotFound {
		t.Errorf("terminate again: %d", r.status)
	}
	if r := f.call(http.MethodDelete, "/ssh-keys/"+keyID, nil); r.status != http.StatusOK || string(r.body) != "{\"data\":{}}\n" {
		t.Errorf("delete key: %d %s", r.status, r.body)
	}
	if r := f.call(http.MethodDelete, "/ssh-keys/"+keyID, nil); r.status != http.StatusNotFound {
		t.Errorf("delete deleted key: %d", r.status)
	}
	if _, keys := f.fakeMachines(); len(keys) != 0 {
		t.Errorf("keys left: %v", keys)
	}
}

func TestLambdaLeaseExpiryMakesInstanceUnhealthy(t *testing.T) {
	t.Parallel()
	f := startLambda(t, Config{})
	job, host := newKeyPair(t), newKeyPair(t)
	leaseFile := filepath.Join(f.srv.Dir(), "lease")
	f.addKey("k", job.authorized)
	id := f.launch(launchBody("leased", "k", cloudConfigFor(host, newKeyPair(t).authorized, leaseFile, 1)))
	f.waitInstanceStatus(id, "active", 15*time.Second)

	// Renewing the lease keeps the machine up; the fake only reads the file's mtime.
	if err := os.WriteFile(leaseFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		now := time.Now()
		if err := os.Chtimes(leaseFile, now, now); err != nil {
			t.Fatal(err)
		}
		if _, in := f.instance(id); in["status"] != "active" {
			t.Fatalf("renewed instance is %v", in["status"])
		}
	}
	m := f.fakeMachine(id)
	f.waitInstanceStatus(id, "unhealthy", 10*time.Second)
	if got := f.fakeMachine(id); got.StoppedReason != "lease expired" {
		t.Errorf("stopped reason %q", got.StoppedReason)
	}
	eventually(t, 15*time.Second, "sshd to end", func() bool { return sshd.ProcessGone(m.SSHDPID) && !tagged(m.Dir) })
	if r := f.call(http.MethodGet, "/instances", nil); !strings.Contains(string(r.body), id) {
		t.Error("a powered-off instance left the list: it is billed until terminated")
	}
	r := f.call(http.MethodPost, "/instance-operations/terminate", map[string]any{"instance_ids": []string{id}})
	if r.status != http.StatusOK {
		t.Errorf("terminate unhealthy: %d %s", r.status, r.body)
	}
}

func TestLambdaValidation(t *testing.T) {
	t.Parallel()
	f := startLambda(t, Config{LaunchInterval: time.Hour})
	job := newKeyPair(t)
	f.addKey("k", job.authorized)
	tests := []struct {
		name  string
		edit  func(map[string]any)
		code  string
		field string // expected in field_errors, or ""
	}{
		{"no region", func(b map[string]any) { delete(b, "region_name") }, "global/invalid-parameters", "region_name"},
		{"no type", func(b map[string]any) { delete(b, "instance_type_name") }, "global/invalid-parameters", "instance_type_name"},
		{"two keys", func(b map[string]any) { b["ssh_key_names"] = []string{"k", "k"} }, "global/invalid-parameters", "ssh_key_names"},
		{"keys not a list", func(b map[string]any) { b["ssh_key_names"] = "k" }, "global/invalid-parameters", "ssh_key_names"},
		{"two file systems", func(b map[string]any) { b["file_system_names"] = []string{"a", "b"} }, "global/invalid-parameters", "file_system_names"},
		{"quantity 2", func(b map[string]any) { b["quantity"] = 2 }, "global/invalid-parameters", "quantity"},
		{"long name", func(b map[string]any) { b["name"] = strings.Repeat("n", 65) }, "global/invalid-parameters", "name"},
		{"unknown type", func(b map[string]any) { b["instance_type_name"] = "gpu_8x_b200" }, "global/invalid-parameters", "instance_type_name"},
		{"unknown key", func(b map[string]any) { b["ssh_key_names"] = []string{"nobody"} }, "global/invalid-parameters", "ssh_key_names"},
	}
	for _, tt := range tests {
		b := launchBody("v", "k", "")
		tt.edit(b)
		r := f.call(http.MethodPost, "/instance-operations/launch", b)
		v := r.json(t)
		if r.status != http.StatusBadRequest || errorCode(v) != tt.code || dig(v, "field_errors", tt.field) == nil {
			t.Errorf("%s: %d %s", tt.name, r.status, r.body)
		}
	}
	if r := f.call(http.MethodPost, "/instance-operations/launch", launchBody("v", "nobody", "")); !strings.Contains(string(r.body), "nobody") {
		t.Errorf("unknown key not named: %s", r.body)
	}

	// Refused launches do not count against the launch rate; an accepted one does.
	f.launch(launchBody("first", "k", ""))
	r := f.call(http.MethodPost, "/instance-operations/launch", launchBody("second", "k", ""))
	if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") != "3600" || errorCode(r.json(t)) != "global/unknown" {
		t.Errorf("second launch: %d %v %s", r.status, r.header.Get("Retry-After"), r.body)
	}

	// SSH keys.
	gen := f.addKey("generated", "")
	priv, _ := gen["private_key"].(string)
	signer, err := ssh.ParsePrivateKey([]byte(priv))
	if err != nil {
		t.Fatalf("generated private key: %v", err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(gen["public_key"].(string)))
	if err != nil || string(pub.Marshal()) != string(signer.PublicKey().Marshal()) {
		t.Errorf("generated pair does not match: %v", err)
	}
	for name, body := range map[string]map[string]any{
		"duplicate": {"name": "k", "public_key": job.authorized},
		"long name": {"name": strings.Repeat("k", 65)},
		"no name":   {"public_key": job.authorized},
		"bad key":   {"name": "bad", "public_key": "ssh-ed25519 nonsense"},
	} {
		if r := f.call(http.MethodPost, "/ssh-keys", body); r.status != http.StatusBadRequest || errorCode(r.json(t)) != "global/invalid-parameters" {
			t.Errorf("add key, %s: %d %s", name, r.status, r.body)
		}
	}
	var list struct{ Data []sshKey }
	if err := json.Unmarshal(f.call(http.MethodGet, "/ssh-keys", nil).body, &list); err != nil || len(list.Data) != 2 {
		t.Errorf("GET /ssh-keys: %+v %v", list, err)
	}
	if r := f.call(http.MethodDelete, "/ssh-keys/nope", nil); r.status != http.StatusNotFound || errorCode(r.json(t)) != "global/object-does-not-exist" {
		t.Errorf("delete unknown key: %d %s", r.status, r.body)
	}
	if r := f.call(http.MethodGet, "/instances/nope", nil); r.status != http.StatusNotFound {
		t.Errorf("unknown instance: %d", r.status)
	}
	if r := f.call(http.MethodPost, "/instance-operations/terminate", map[string]any{"instance_ids": []string{"nope"}}); r.status != http.StatusNotFound {
		t.Errorf("terminate unknown: %d", r.status)
	}
}

func TestLambdaAuth(t *testing.T) {
	t.Parallel()
	f := startLambda(t, Config{})
	basic := func(r *http.Request) { r.SetBasicAuth(testKey, "") }
	if r := f.callWith(http.MethodGet, f.base+"/instances", nil, basic); r.status != http.StatusOK {
		t.Errorf("basic auth: %d %s", r.status, r.body)
	}
	wrong := func(r *http.Request) { r.Header.Set("Authorization", "Bearer nope") }
	if r := f.callWith(http.MethodGet, f.base+"/instances", nil, wrong); r.status != http.StatusUnauthorized || errorCode(r.json(t)) != "global/invalid-api-key" {
		t.Errorf("wrong key: %d %s", r.status, r.body)
	}

	faulty := startLambda(t, Config{Faults: Faults{Auth: true}})
	r := faulty.call(http.MethodGet, "/instances", nil)
	if r.status != http.StatusUnauthorized || dig(r.json(t), "error", "message") != "API key is invalid, expired, or deleted." {
		t.Errorf("auth fault: %d %s", r.status, r.body)
	}
}

func TestLambdaFaults(t *testing.T) {
	t.Parallel()
	t.Run("no-user-data", func(t *testing.T) {
		t.Parallel()
		f := startLambda(t, Config{Faults: Faults{NoUserData: true}})
		f.addKey("k", newKeyPair(t).authorized)
		r := f.call(http.MethodPost, "/instance-operations/launch", launchBody("u", "k", "#cloud-config\n"))
		if r.status != http.StatusBadRequest || dig(r.json(t), "field_errors", "user_data", "message") != "user_data is not supported" {
			t.Errorf("launch with user data: %d %s", r.status, r.body)
		}
		id := f.launch(launchBody("plain", "k", ""))
		f.waitInstanceStatus(id, "active", 15*time.Second)
		if f.fakeMachine(id).HostKeyInjected {
			t.Error("host key injected without user data")
		}
	})
	t.Run("no-capacity", func(t *testing.T) {
		t.Parallel()
		f := startLambda(t, Config{Faults: Faults{NoCapacity: true}})
		f.addKey("k", newKeyPair(t).authorized)
		types := f.call(http.MethodGet, "/instance-types", nil).json(t)
		if n := len(dig(types, "data", "gpu_1x_h100_pcie", "regions_with_capacity_available").([]any)); n != 0 {
			t.Errorf("regions with capacity: %d", n)
		}
		r := f.call(http.MethodPost, "/instance-operations/launch", launchBody("c", "k", ""))
		if r.status != http.StatusBadRequest || errorCode(r.json(t)) != "instance-operations/launch/insufficient-capacity" {
			t.Errorf("launch: %d %s", r.status, r.body)
		}
	})
	t.Run("rate-limit", func(t *testing.T) {
		t.Parallel()
		f := startLambda(t, Config{Faults: Faults{RateLimit: true}})
		f.call(http.MethodGet, "/instances", nil)
		r := f.call(http.MethodGet, "/instances", nil)
		if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") != "1" || dig(r.json(t), "error", "message") != "Too many requests" {
			t.Errorf("second request: %d %s", r.status, r.body)
		}
		if f.stats().Statuses["429"] != 1 {
			t.Errorf("stats = %+v", f.stats())
		}
	})
	t.Run("create-500-but-created", func(t *testing.T) {
		t.Parallel()
		f := startLambda(t, Config{Faults: Faults{CreateFailsButCreates: true}})
		f.addKey("k", newKeyPair(t).authorized)
		r := f.call(http.MethodPost, "/instance-operations/launch", launchBody("leaky", "k", ""))
		if r.status != http.StatusInternalServerError || errorCode(r.json(t)) == "" {
			t.Errorf("launch: %d %s", r.status, r.body)
		}
		if r := f.call(http.MethodGet, "/instances", nil); !strings.Contains(string(r.body), `"leaky"`) {
			t.Errorf("instance not made: %s", r.body)
		}
	})
	t.Run("preempt-after", func(t *testing.T) {
		t.Parallel()
		f := startLambda(t, Config{Faults: Faults{PreemptAfter: time.Second}})
		f.addKey("k", newKeyPair(t).authorized)
		id := f.launch(launchBody("p", "k", ""))
		f.waitInstanceStatus(id, "active", 15*time.Second)
		m := f.fakeMachine(id)
		f.waitInstanceStatus(id, "terminated", 15*time.Second)
		eventually(t, 15*time.Second, "sshd to end", func() bool { return sshd.ProcessGone(m.SSHDPID) })
	})
	t.Run("preempt-once", func(t *testing.T) {
		t.Parallel()
		f := startLambda(t, Config{Faults: Faults{PreemptAfter: time.Second, PreemptOnce: true}})
		f.addKey("k", newKeyPair(t).authorized)
		first := f.launch(launchBody("p1", "k", ""))
		f.waitInstanceStatus(first, "terminated", 15*time.Second)
		second := f.launch(launchBody("p2", "k", ""))
		f.waitInstanceStatus(second, "active", 15*time.Second)
		time.Sleep(2500 * time.Millisecond)
		if _, in := f.instance(second); in["status"] != "active" {
			t.Errorf("the replacement was preempted too: %v", in["status"])
		}
	})
	t.Run("slow-delete", func(t *testing.T) {
		t.Parallel()
		f := startLambda(t, Config{Faults: Faults{SlowDelete: true}, SlowDelete: 2 * time.Second})
		job, host := newKeyPair(t), newKeyPair(t)
		f.addKey("k", job.authorized)
		id := f.launch(launchBody("s", "k", cloudConfigFor(host, job.authorized, "", 0)))
		in := f.waitInstanceStatus(id, "active", 15*time.Second)
		f.call(http.MethodPost, "/instance-operations/terminate", map[string]any{"instance_ids": []string{id}})
		if _, in := f.instance(id); in["status"] != "terminating" {
			t.Errorf("status right after terminate: %v", in["status"])
		}
		addr := net.JoinHostPort(in["ip"].(string), strconv.Itoa(f.srv.cfg.SSHPort))
		if _, err := sshRun(t, addr, host.signer.PublicKey(), job.signer, "true"); err != nil {
			t.Errorf("ssh while terminating: %v", err)
		}
		f.waitInstanceStatus(id, "terminated", 15*time.Second)
	})
}
