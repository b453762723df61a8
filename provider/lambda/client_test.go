package lambda_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/internal/fakecloud"
	"github.com/understudy-ai/training-service/internal/fakecloud/fakecloudtest"
	"github.com/understudy-ai/training-service/provider/cloudapi"
	"github.com/understudy-ai/training-service/provider/lambda"
	"github.com/understudy-ai/training-service/provider/sshd"
)

const (
	testKey = "test-key"
	a10     = "gpu_1x_a10"
)

// fastRetry keeps retries (after 429s and ambiguous failures) short in tests.
var fastRetry = cloudapi.RetryPolicy{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond,
	Deadline: 10 * time.Second, MaxRetryAfter: 50 * time.Millisecond}

// newClient returns a client that spaces requests and launches by a few milliseconds, with
// its rate limit files in a directory of its own.
func newClient(t *testing.T, apiURL, key string) *lambda.Client {
	return lambda.New(lambda.Config{APIURL: apiURL, APIKey: key, Retry: fastRetry, PollInterval: 100 * time.Millisecond,
		RequestInterval: time.Millisecond, LaunchInterval: 20 * time.Millisecond, RateDir: t.TempDir()})
}

// fake is an in-process fake Lambda Cloud served over HTTP.
type fake struct {
	t *testing.T
	*fakecloudtest.Fake
}

// startFake serves a fake Lambda Cloud with cfg's faults until the test ends.
func startFake(t *testing.T, cfg fakecloud.Config) *fake {
	t.Helper()
	cfg.Provider, cfg.APIKey = fakecloud.Lambda, testKey
	return &fake{t: t, Fake: fakecloudtest.Start(t, cfg, nil)}
}

type fakeMachine struct {
	ID              string   `json:"id"`
	Name            string   `json:"name"`
	Status          string   `json:"status"`
	SSHHost         string   `json:"ssh_host"`
	SSHPort         int      `json:"ssh_port"`
	HostKeyInjected bool     `json:"host_key_injected"`
	AuthorizedKeys  []string `json:"authorized_keys"`
}

type fakeKey struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

func (f *fake) get(path string, out any) { f.Get(path, out) }

// machines lists the machines and SSH keys the fake holds.
func (f *fake) machines() ([]fakeMachine, []fakeKey) {
	f.t.Helper()
	var out struct {
		Machines []fakeMachine `json:"machines"`
		SSHKeys  []fakeKey     `json:"ssh_keys"`
	}
	f.get("/_fake/machines", &out)
	return out.Machines, out.SSHKeys
}

type fakeStats struct {
	Statuses map[string]int `json:"statuses"`
	Creates  int            `json:"creates"`
}

func (f *fake) stats() fakeStats {
	f.t.Helper()
	var s fakeStats
	f.get("/_fake/stats", &s)
	return s
}

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func authorizedKey(t *testing.T, comment string) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " " + comment
}

// addKey registers a fresh key under name.
func addKey(t *testing.T, ctx context.Context, c *lambda.Client, name string) *lambda.SSHKey {
	t.Helper()
	key, err := c.AddSSHKey(ctx, name, authorizedKey(t, "job@test"))
	if err != nil {
		t.Fatalf("AddSSHKey: %v", err)
	}
	return key
}

func launchRequest(name, keyName string) lambda.LaunchRequest {
	return lambda.LaunchRequest{RegionName: "us-east-1", InstanceTypeName: a10, SSHKeyNames: []string{keyName}, Name: name}
}

// terminate terminates an instance and waits until it is terminated.
func terminate(t *testing.T, c *lambda.Client, id string) {
	t.Helper()
	ctx := waitCtx(t)
	if err := c.Terminate(ctx, id); err != nil {
		t.Fatalf("Terminate: %v", err)
	}
	if err := c.WaitTerminated(ctx, id); err != nil {
		t.Fatalf("WaitTerminated: %v", err)
	}
}

func TestInstanceLifecycle(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{})
	c := newClient(t, f.URL, testKey)
	ctx := waitCtx(t)
	key := addKey(t, ctx, c, "tr-life-key")

	id, err := c.Launch(ctx, launchRequest("tr-life-1", key.Name))
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	inst, err := c.WaitActive(ctx, id)
	if err != nil {
		t.Fatalf("WaitActive: %v", err)
	}
	ms, _ := f.machines()
	if len(ms) != 1 || ms[0].ID != id {
		t.Fatalf("fake machines = %+v, want instance %s", ms, id)
	}
	ip := net.ParseIP(inst.Address())
	if inst.Status != lambda.StatusActive || ip == nil || !ip.IsLoopback() || inst.Address() != ms[0].SSHHost || ms[0].SSHPort != f.SSHPort {
		t.Errorf("instance status=%s ip=%q, fake machine at %s:%d; want active at the machine's loopback address",
			inst.Status, inst.Address(), ms[0].SSHHost, ms[0].SSHPort)
	}
	if inst.NameOr() != "tr-life-1" || inst.Region == nil || inst.Region.Name != "us-east-1" ||
		inst.InstanceType.Name != a10 || inst.InstanceType.HourlyPrice() != 0.75 || !slices.Equal(inst.SSHKeyNames, []string{key.Name}) {
		t.Errorf("instance = %+v", inst)
	}
	if !slices.Equal(ms[0].AuthorizedKeys, []string{key.PublicKey}) {
		t.Errorf("machine authorized keys = %q, want the registered key", ms[0].AuthorizedKeys)
	}
	// The instance's sshd answers where the API says.
	if _, err := sshd.ScanHostKey(ctx, net.JoinHostPort(inst.Address(), strconv.Itoa(f.SSHPort))); err != nil {
		t.Errorf("no sshd at the instance's address: %v", err)
	}

	found, err := c.FindInstanceByName(ctx, "tr-life-1")
	if err != nil || found == nil || found.ID != id {
		t.Errorf("FindInstanceByName = %+v, %v; want instance %s", found, err, id)
	}
	if none, err := c.FindInstanceByName(ctx, "no-such-instance"); none != nil || err != nil {
		t.Errorf("FindInstanceByName(unknown) = %+v, %v; want nil, nil", none, err)
	}

	// A key cannot go while an instance uses it.
	if err := c.DeleteSSHKey(ctx, key.ID); cloudapi.ReasonOf(err) != cloudapi.ReasonConflict {
		t.Errorf("DeleteSSHKey while in use: %v, want reason %s", err, cloudapi.ReasonConflict)
	}

	terminate(t, c, id)
	if ms, _ := f.machines(); len(ms) != 0 {
		t.Errorf("fake machines after terminate = %+v, want none", ms)
	}
	if err := c.Terminate(ctx, id); err != nil {
		t.Errorf("second Terminate: %v, want success", err)
	}
	if found, err := c.FindInstanceByName(ctx, "tr-life-1"); found != nil || err != nil {
		t.Errorf("FindInstanceByName after terminate = %+v, %v; want nil, nil", found, err)
	}
	if err := c.DeleteSSHKey(ctx, key.ID); err != nil {
		t.Errorf("DeleteSSHKey: %v", err)
	}
	if err := c.DeleteSSHKey(ctx, key.ID); err != nil {
		t.Errorf("second DeleteSSHKey: %v, want success", err)
	}
	if _, keys := f.machines(); len(keys) != 0 {
		t.Errorf("fake keys = %+v, want none", keys)
	}
}

func TestSSHKeys(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{})
	c := newClient(t, f.URL, testKey)
	ctx := waitCtx(t)
	line := authorizedKey(t, "job@test")

	first, err := c.AddSSHKey(ctx, "tr-key-1", line)
	if err != nil {
		t.Fatalf("AddSSHKey: %v", err)
	}
	if first.ID == "" || first.Name != "tr-key-1" || first.PublicKey != line {
		t.Errorf("AddSSHKey = %+v", first)
	}
	// The same key again, even under another comment, is the key registered before.
	again, err := c.AddSSHKey(ctx, "tr-key-1", strings.TrimSuffix(line, "job@test")+"other@test")
	if err != nil || again.ID != first.ID {
		t.Errorf("AddSSHKey again = %+v, %v; want key %s", again, err, first.ID)
	}
	// Another key under that name is refused.
	if k, err := c.AddSSHKey(ctx, "tr-key-1", authorizedKey(t, "job@test")); err == nil || cloudapi.ReasonOf(err) != cloudapi.ReasonInvalid {
		t.Errorf("AddSSHKey of another key under the same name = %+v, %v; want reason %s", k, err, cloudapi.ReasonInvalid)
	}
	keys, err := c.SSHKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].ID != first.ID {
		t.Errorf("SSHKeys = %+v, %v; want only %s", keys, err, first.ID)
	}
	if k, err := c.FindSSHKey(ctx, "tr-key-1"); err != nil || k == nil || k.ID != first.ID {
		t.Errorf("FindSSHKey = %+v, %v", k, err)
	}
	if k, err := c.FindSSHKey(ctx, "no-such-key"); err != nil || k != nil {
		t.Errorf("FindSSHKey(unknown) = %+v, %v; want nil, nil", k, err)
	}
	if err := c.DeleteSSHKey(ctx, first.ID); err != nil {
		t.Errorf("DeleteSSHKey: %v", err)
	}
	if err := c.DeleteSSHKey(ctx, "no-such-id"); err != nil {
		t.Errorf("DeleteSSHKey(unknown): %v, want success", err)
	}
}

// A launch that answers 500 although it made the instance returns that instance and makes
// no other.
func TestLaunchAfterAmbiguousFailure(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{Faults: fakecloud.Faults{CreateFailsButCreates: true}})
	c := newClient(t, f.URL, testKey)
	ctx := waitCtx(t)
	key := addKey(t, ctx, c, "tr-ambiguous-key")

	id, err := c.Launch(ctx, launchRequest("tr-ambiguous-1", key.Name))
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	if ms, _ := f.machines(); len(ms) != 1 || ms[0].ID != id {
		t.Errorf("fake machines = %+v, want only instance %s", ms, id)
	}
	if n := f.stats().Creates; n != 1 {
		t.Errorf("creates = %d, want 1", n)
	}
	terminate(t, c, id)
}

func TestLaunchWithoutCapacity(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{Faults: fakecloud.Faults{NoCapacity: true}})
	c := newClient(t, f.URL, testKey)
	ctx := waitCtx(t)
	key := addKey(t, ctx, c, "tr-nocap-key")

	offers, err := c.InstanceTypes(ctx)
	if err != nil {
		t.Fatalf("InstanceTypes: %v", err)
	}
	if regions := offers[a10].Regions; len(regions) != 0 {
		t.Errorf("regions with capacity = %+v, want none", regions)
	}
	if _, err := c.Launch(ctx, launchRequest("tr-nocap-1", key.Name)); cloudapi.ReasonOf(err) != cloudapi.ReasonNoCapacity {
		t.Errorf("Launch: %v, want reason %s", err, cloudapi.ReasonNoCapacity)
	}
	if ms, _ := f.machines(); len(ms) != 0 {
		t.Errorf("fake machines = %+v, want none", ms)
	}
}

func TestAuthFailures(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{})
	faulted := startFake(t, fakecloud.Config{Faults: fakecloud.Faults{Auth: true}})
	for name, c := range map[string]*lambda.Client{
		"wrong key":  newClient(t, f.URL, "wrong-key"),
		"auth fault": newClient(t, faulted.URL, testKey),
	} {
		ctx := waitCtx(t)
		calls := map[string]func() error{
			"InstanceTypes": func() error { _, err := c.InstanceTypes(ctx); return err },
			"Launch":        func() error { _, err := c.Launch(ctx, launchRequest("tr-auth-1", "k")); return err },
			"Instances":     func() error { _, err := c.Instances(ctx); return err },
			"AddSSHKey":     func() error { _, err := c.AddSSHKey(ctx, "k", authorizedKey(t, "a@b")); return err },
			"Terminate":     func() error { return c.Terminate(ctx, "0123") },
		}
		for call, fn := range calls {
			err := fn()
			if cloudapi.ReasonOf(err) != cloudapi.ReasonAuth {
				t.Errorf("%s: %s: %v, want reason %s", name, call, err, cloudapi.ReasonAuth)
			}
			if err != nil && strings.Contains(err.Error(), testKey) {
				t.Errorf("%s: %s: error %q holds the API key", name, call, err)
			}
		}
	}
}

// Under the rate-limit fault every second request answers 429; every call still succeeds.
func TestRateLimitIsRetried(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{Faults: fakecloud.Faults{RateLimit: true}})
	c := newClient(t, f.URL, testKey)
	ctx := waitCtx(t)

	if _, err := c.InstanceTypes(ctx); err != nil {
		t.Fatalf("InstanceTypes: %v", err)
	}
	key := addKey(t, ctx, c, "tr-rate-key")
	id, err := c.Launch(ctx, launchRequest("tr-rate-1", key.Name))
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	if _, err := c.WaitActive(ctx, id); err != nil {
		t.Fatalf("WaitActive: %v", err)
	}
	terminate(t, c, id)
	if err := c.DeleteSSHKey(ctx, key.ID); err != nil {
		t.Fatalf("DeleteSSHKey: %v", err)
	}
	s := f.stats()
	if s.Statuses["429"] == 0 {
		t.Errorf("statuses = %v, want some 429s", s.Statuses)
	}
	if s.Creates != 1 {
		t.Errorf("creates = %d, want 1", s.Creates)
	}
}

func TestInstanceTypes(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{})
	offers, err := newClient(t, f.URL, testKey).InstanceTypes(waitCtx(t))
	if err != nil {
		t.Fatalf("InstanceTypes: %v", err)
	}
	if len(offers) != 3 {
		t.Errorf("InstanceTypes has %d types, want 3", len(offers))
	}
	o, ok := offers[a10]
	if !ok {
		t.Fatalf("no %s in %v", a10, offers)
	}
	it := o.InstanceType
	if it.Name != a10 || it.PriceCentsPerHour != 75 || it.HourlyPrice() != 0.75 || it.GPUDescription != "A10 (24 GB)" || it.Specs.GPUs != 1 {
		t.Errorf("%s = %+v", a10, it)
	}
	var regions []string
	for _, r := range o.Regions {
		regions = append(regions, r.Name)
	}
	if !slices.Equal(regions, []string{"us-east-1", "us-west-1"}) {
		t.Errorf("regions with capacity = %v", regions)
	}
}

// A launch carrying user_data that the API refuses is recognised, so that the caller can
// launch without it.
func TestUserDataRefused(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{Faults: fakecloud.Faults{NoUserData: true}})
	c := newClient(t, f.URL, testKey)
	ctx := waitCtx(t)
	key := addKey(t, ctx, c, "tr-userdata-key")

	req := launchRequest("tr-userdata-1", key.Name)
	req.UserData = "#cloud-config\nssh_authorized_keys: []\n"
	_, err := c.Launch(ctx, req)
	if !lambda.IsUserDataRefused(err) || cloudapi.ReasonOf(err) != cloudapi.ReasonInvalid {
		t.Fatalf("Launch with user data: %v; want a refusal of user_data", err)
	}
	if ms, _ := f.machines(); len(ms) != 0 {
		t.Errorf("fake machines = %+v, want none", ms)
	}
	req.UserData = ""
	id, err := c.Launch(ctx, req)
	if err != nil {
		t.Fatalf("Launch without user data: %v", err)
	}
	terminate(t, c, id)

	if lambda.IsUserDataRefused(nil) || lambda.IsUserDataRefused(errors.New("user_data")) {
		t.Error("IsUserDataRefused holds for an error that is no refusal")
	}
	bad := launchRequest("tr-userdata-2", "no-such-key")
	if _, err := c.Launch(ctx, bad); err == nil || lambda.IsUserDataRefused(err) {
		t.Errorf("Launch with an unknown key: %v; want an error that is no refusal of user_data", err)
	}
}

// Lambda's error envelopes are classified by code, and prices may come as strings.
func TestErrorDecoding(t *testing.T) {
	t.Parallel()
	envelope := func(code, message string) string {
		b, _ := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": message}})
		return string(b)
	}
	cases := []struct {
		name   string
		status int
		body   string
		want   cloudapi.Reason
		code   string
	}{
		{"quota", http.StatusBadRequest, envelope(lambda.CodeQuotaExceeded, "Quota exceeded."), cloudapi.ReasonQuota, lambda.CodeQuotaExceeded},
		{"account inactive", http.StatusForbidden, envelope(lambda.CodeAccountInactive, "Your account is inactive."), cloudapi.ReasonQuota, lambda.CodeAccountInactive},
		{"capacity", http.StatusBadRequest, envelope(lambda.CodeInsufficientCapacity, "Not enough capacity."), cloudapi.ReasonNoCapacity, lambda.CodeInsufficientCapacity},
		{"bad key", http.StatusUnauthorized, envelope(lambda.CodeInvalidAPIKey, "API key is invalid."), cloudapi.ReasonAuth, lambda.CodeInvalidAPIKey},
		{"unknown code", http.StatusBadRequest, envelope("global/something-new", "New."), cloudapi.ReasonInvalid, "global/something-new"},
		{"no envelope", http.StatusForbidden, "<html>forbidden</html>", cloudapi.ReasonAuth, ""},
	}
	for _, tc := range cases {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(tc.status)
			_, _ = io.WriteString(w, tc.body)
		}))
		_, err := newClient(t, srv.URL+"/api/v1", testKey).Launch(t.Context(), launchRequest("tr-decode-1", "k"))
		srv.Close()
		var ce *cloudapi.Error
		switch {
		case !errors.As(err, &ce):
			t.Errorf("%s: Launch: %v, want a *cloudapi.Error", tc.name, err)
		case ce.Reason != tc.want || ce.Code != tc.code || ce.Status != tc.status:
			t.Errorf("%s: reason %s code %q status %d, want %s %q %d", tc.name, ce.Reason, ce.Code, ce.Status, tc.want, tc.code, tc.status)
		case !strings.Contains(err.Error(), cloudapi.Marker(tc.want)):
			t.Errorf("%s: %v lacks the marker", tc.name, err)
		}
	}

	// Field errors name the fields, sorted, and join their messages to the message.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"error":{"code":"global/invalid-parameters","message":"Invalid request parameters.","suggestion":"Fix them."},
			"field_errors":{"user_data":{"code":"global/invalid-parameters","message":"Not supported."},"name":{"code":"global/invalid-parameters","message":"Too long."}}}`)
	}))
	_, err := newClient(t, srv.URL, testKey).Launch(t.Context(), launchRequest("tr-decode-2", "k"))
	srv.Close()
	var ce *cloudapi.Error
	if !errors.As(err, &ce) || !slices.Equal(ce.Fields, []string{"name", "user_data"}) ||
		ce.Message != "Invalid request parameters. (Fix them.); name: Too long.; user_data: Not supported." || !lambda.IsUserDataRefused(err) {
		t.Errorf("field errors: %#v", err)
	}
}

func TestPriceAsString(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/instance-types" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, `{"data":{
			"gpu_1x_a100":{"instance_type":{"name":"gpu_1x_a100","description":"1x A100","gpu_description":"A100 (40 GB PCIe)","price_cents_per_hour":"110","specs":{"vcpus":30,"memory_gib":200,"storage_gib":512,"gpus":1}},"regions_with_capacity_available":[{"name":"us-south-1","description":"Texas, USA"}]},
			"gpu_1x_a10":{"instance_type":{"name":"gpu_1x_a10","price_cents_per_hour":75,"specs":{"gpus":1}},"regions_with_capacity_available":[]},
			"gpu_8x_h100":{"instance_type":{"name":"gpu_8x_h100","price_cents_per_hour":null},"regions_with_capacity_available":[]}}}`)
	}))
	defer srv.Close()
	offers, err := newClient(t, srv.URL+"/api/v1", testKey).InstanceTypes(t.Context())
	if err != nil {
		t.Fatalf("InstanceTypes: %v", err)
	}
	a100 := offers["gpu_1x_a100"]
	if a100.InstanceType.PriceCentsPerHour != 110 || a100.InstanceType.HourlyPrice() != 1.1 || a100.InstanceType.Specs.VCPUs != 30 ||
		a100.InstanceType.GPUDescription != "A100 (40 GB PCIe)" || len(a100.Regions) != 1 || a100.Regions[0].Name != "us-south-1" {
		t.Errorf("gpu_1x_a100 = %+v", a100)
	}
	if p := offers["gpu_1x_a10"].InstanceType.PriceCentsPerHour; p != 75 {
		t.Errorf("numeric price = %d, want 75", p)
	}
	if p := offers["gpu_8x_h100"].InstanceType.PriceCentsPerHour; p != 0 {
		t.Errorf("null price = %d, want 0", p)
	}
}
