package runpod_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os/user"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/internal/fakecloud"
	"github.com/understudy-ai/training-service/internal/fakecloud/fakecloudtest"
	"github.com/understudy-ai/training-service/provider/cloudapi"
	"github.com/understudy-ai/training-service/provider/runpod"
)

const (
	testKey = "test-key"
	rtx4090 = "NVIDIA GeForce RTX 4090"
	image   = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2204"
)

// fastRetry keeps retries (after 429s and ambiguous failures) short in tests.
var fastRetry = cloudapi.RetryPolicy{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond,
	Deadline: 10 * time.Second, MaxRetryAfter: 50 * time.Millisecond}

func newClient(apiURL, key string) *runpod.Client {
	return runpod.New(runpod.Config{APIURL: apiURL, APIKey: key, Retry: fastRetry, PollInterval: 100 * time.Millisecond})
}

// fake is an in-process fake RunPod served over HTTP.
type fake struct {
	t *testing.T
	*fakecloudtest.Fake
}

// startFake serves a fake RunPod with cfg's faults until the test ends.
func startFake(t *testing.T, cfg fakecloud.Config) *fake {
	t.Helper()
	cfg.Provider, cfg.APIKey = fakecloud.RunPod, testKey
	return &fake{t: t, Fake: fakecloudtest.Start(t, cfg, nil)}
}

type fakeMachine struct {
	ID             string   `json:"id"`
	Name           string   `json:"name"`
	Status         string   `json:"status"`
	Interruptible  bool     `json:"interruptible"`
	SSHHost        string   `json:"ssh_host"`
	SSHPort        int      `json:"ssh_port"`
	AuthorizedKeys []string `json:"authorized_keys"`
}

func (f *fake) get(path string, out any) { f.Get(path, out) }

// machines lists the machines the fake holds.
func (f *fake) machines() []fakeMachine {
	f.t.Helper()
	var out struct {
		Machines []fakeMachine `json:"machines"`
	}
	f.get("/_fake/machines", &out)
	return out.Machines
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

func podRequest(name string) runpod.CreatePodRequest {
	return runpod.CreatePodRequest{Name: name, Image: image, GPU: &runpod.GPU{ID: rtx4090, Count: 1}, Cloud: "SECURE",
		Ports: []string{"22/tcp"}, Disk: 20}
}

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func currentUser(t *testing.T) string {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

func authorizedKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) + " job@test"
}

// deletePod deletes a pod and waits until it is gone.
func deletePod(t *testing.T, c *runpod.Client, id string) {
	t.Helper()
	ctx := waitCtx(t)
	if err := c.DeletePod(ctx, id); err != nil {
		t.Fatalf("DeletePod: %v", err)
	}
	if err := c.WaitGone(ctx, id); err != nil {
		t.Fatalf("WaitGone: %v", err)
	}
}

func TestPodLifecycle(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{})
	c := newClient(f.URL, testKey)
	ctx := waitCtx(t)
	req := podRequest("tr-life-1")
	req.Env = map[string]string{"PUBLIC_KEY": authorizedKey(t)}

	created, err := c.CreatePod(ctx, req)
	if err != nil {
		t.Fatalf("CreatePod: %v", err)
	}
	if created.ID == "" || created.Name != req.Name || created.Running() {
		t.Errorf("created pod id=%q name=%q status=%s; want an id, the name, not running yet", created.ID, created.Name, created.Status)
	}
	pod, err := c.WaitRunning(ctx, created.ID)
	if err != nil {
		t.Fatalf("WaitRunning: %v", err)
	}
	ms := f.machines()
	if len(ms) != 1 || ms[0].ID != created.ID {
		t.Fatalf("fake machines = %+v, want the one pod", ms)
	}
	d := pod.SSH.Direct
	if !pod.Running() || d.Host != "127.0.0.1" || d.Port != ms[0].SSHPort || d.Username != currentUser(t) {
		t.Errorf("running pod status=%s ssh.direct=%+v; want RUNNING at 127.0.0.1:%d as %s", pod.Status, d, ms[0].SSHPort, currentUser(t))
	}
	if !near(pod.Cost, 0.69) || pod.GPU == nil || pod.GPU.ID != rtx4090 || pod.Image != image {
		t.Errorf("pod cost=%v gpu=%+v image=%q; want the secure price 0.69 of one %s", pod.Cost, pod.GPU, pod.Image, rtx4090)
	}
	if !slices.Equal(ms[0].AuthorizedKeys, []string{req.Env["PUBLIC_KEY"]}) {
		t.Errorf("machine authorized keys = %q, want PUBLIC_KEY", ms[0].AuthorizedKeys)
	}

	found, err := c.FindPodByName(ctx, req.Name)
	if err != nil || found == nil || found.ID != created.ID {
		t.Errorf("FindPodByName(%q) = %+v, %v; want pod %s", req.Name, found, err, created.ID)
	}
	if none, err := c.FindPodByName(ctx, "no-such-pod"); none != nil || err != nil {
		t.Errorf("FindPodByName(unknown) = %+v, %v; want nil, nil", none, err)
	}

	deletePod(t, c, created.ID)
	if ms := f.machines(); len(ms) != 0 {
		t.Errorf("fake machines after delete = %+v, want none", ms)
	}
	if _, err := c.GetPod(ctx, created.ID); !cloudapi.IsNotFound(err) {
		t.Errorf("GetPod after delete: %v, want not_found", err)
	}
	if err := c.DeletePod(ctx, created.ID); err != nil {
		t.Errorf("second DeletePod: %v, want success", err)
	}
	if found, err := c.FindPodByName(ctx, req.Name); found != nil || err != nil {
		t.Errorf("FindPodByName after delete = %+v, %v; want nil, nil", found, err)
	}
}

// A create that answers 500 although it made the pod returns that pod and makes no other.
func TestCreateAfterAmbiguousFailure(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{Faults: fakecloud.Faults{CreateFailsButCreates: true}})
	c := newClient(f.URL, testKey)
	ctx := waitCtx(t)

	pod, err := c.CreatePod(ctx, podRequest("tr-ambiguous-1"))
	if err != nil {
		t.Fatalf("CreatePod: %v", err)
	}
	if ms := f.machines(); len(ms) != 1 || ms[0].ID != pod.ID {
		t.Fatalf("fake machines = %+v, want only pod %s", ms, pod.ID)
	}
	if n := f.stats().Creates; n != 1 {
		t.Errorf("creates = %d, want 1", n)
	}

	price, err := c.SpotPrice(ctx, rtx4090, 1)
	if err != nil {
		t.Fatal(err)
	}
	id, cost, err := c.CreateSpotPod(ctx, runpod.SpotPodRequest{Name: "tr-ambiguous-2", Image: image, GPUTypeID: rtx4090,
		BidPerGPU: price.MinimumBidPerGPU})
	if err != nil {
		t.Fatalf("CreateSpotPod: %v", err)
	}
	if id == "" || id == pod.ID || !near(cost, price.MinimumBidPerGPU) {
		t.Errorf("CreateSpotPod = %q, %v; want a new pod at %v", id, cost, price.MinimumBidPerGPU)
	}
	if n := f.stats().Creates; n != 2 {
		t.Errorf("creates = %d, want 2", n)
	}
	if ms := f.machines(); len(ms) != 2 {
		t.Errorf("fake machines = %+v, want two", ms)
	}
}

func TestCreateWithoutCapacity(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{Faults: fakecloud.Faults{NoCapacity: true}})
	c := newClient(f.URL, testKey)
	ctx := waitCtx(t)

	if _, err := c.CreatePod(ctx, podRequest("tr-nocap-1")); cloudapi.ReasonOf(err) != cloudapi.ReasonNoCapacity {
		t.Errorf("CreatePod: %v, want reason %s", err, cloudapi.ReasonNoCapacity)
	}
	price, err := c.SpotPrice(ctx, rtx4090, 1)
	if err != nil {
		t.Fatalf("SpotPrice: %v", err)
	}
	if price.StockStatus != "None" {
		t.Errorf("stock = %q, want None", price.StockStatus)
	}
	_, _, err = c.CreateSpotPod(ctx, runpod.SpotPodRequest{Name: "tr-nocap-2", Image: image, GPUTypeID: rtx4090, BidPerGPU: price.MinimumBidPerGPU})
	if cloudapi.ReasonOf(err) != cloudapi.ReasonNoCapacity {
		t.Errorf("CreateSpotPod: %v, want reason %s", err, cloudapi.ReasonNoCapacity)
	}
	if ms := f.machines(); len(ms) != 0 {
		t.Errorf("fake machines = %+v, want none", ms)
	}
}

func TestAuthFailures(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{})
	faulted := startFake(t, fakecloud.Config{Faults: fakecloud.Faults{Auth: true}})
	for name, c := range map[string]*runpod.Client{
		"wrong key":  newClient(f.URL, "wrong-key"),
		"auth fault": newClient(faulted.URL, testKey),
	} {
		ctx := waitCtx(t)
		calls := map[string]func() error{
			"CreatePod": func() error { _, err := c.CreatePod(ctx, podRequest("tr-auth-1")); return err },
			"ListPods":  func() error { _, err := c.ListPods(ctx); return err },
			"GPUType":   func() error { _, err := c.GPUType(ctx, rtx4090); return err },
			"SpotPrice": func() error { _, err := c.SpotPrice(ctx, rtx4090, 1); return err },
			"CreateSpotPod": func() error {
				_, _, err := c.CreateSpotPod(ctx, runpod.SpotPodRequest{Name: "tr-auth-2", Image: image, GPUTypeID: rtx4090, BidPerGPU: 1})
				return err
			},
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
	if ms := f.machines(); len(ms) != 0 {
		t.Errorf("fake machines = %+v, want none", ms)
	}
}

// Under the rate-limit fault every second request answers 429; every call still succeeds.
func TestRateLimitIsRetried(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{Faults: fakecloud.Faults{RateLimit: true}})
	c := newClient(f.URL, testKey)
	ctx := waitCtx(t)

	if _, err := c.GPUType(ctx, rtx4090); err != nil {
		t.Fatalf("GPUType: %v", err)
	}
	pod, err := c.CreatePod(ctx, podRequest("tr-rate-1"))
	if err != nil {
		t.Fatalf("CreatePod: %v", err)
	}
	if _, err := c.WaitRunning(ctx, pod.ID); err != nil {
		t.Fatalf("WaitRunning: %v", err)
	}
	if _, err := c.SpotPrice(ctx, rtx4090, 1); err != nil {
		t.Fatalf("SpotPrice: %v", err)
	}
	if _, err := c.ListPods(ctx); err != nil {
		t.Fatalf("ListPods: %v", err)
	}
	deletePod(t, c, pod.ID)
	s := f.stats()
	if s.Statuses["429"] == 0 {
		t.Errorf("statuses = %v, want some 429s", s.Statuses)
	}
	if s.Creates != 1 {
		t.Errorf("creates = %d, want 1", s.Creates)
	}
}

func TestGPUCatalogue(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{})
	c := newClient(f.URL, testKey)
	ctx := waitCtx(t)

	g, err := c.GPUType(ctx, rtx4090)
	if err != nil {
		t.Fatalf("GPUType: %v", err)
	}
	if g.ID != rtx4090 || g.Memory != 24 || !near(g.Price.Secure, 0.69) || !near(g.Price.Community, 0.34) {
		t.Errorf("GPUType = %+v", g)
	}
	for _, tc := range []struct {
		cloud string
		count int
		want  float64
	}{
		{"SECURE", 1, 0.69}, {"SECURE", 2, 1.38}, {"community", 1, 0.34}, {"COMMUNITY", 4, 1.36}, {"", 0, 0.69},
	} {
		if got := g.HourlyPrice(tc.cloud, tc.count); !near(got, tc.want) {
			t.Errorf("HourlyPrice(%q, %d) = %v, want %v", tc.cloud, tc.count, got, tc.want)
		}
	}
	if _, err := c.GPUType(ctx, "NVIDIA Imaginary 9000"); !cloudapi.IsNotFound(err) {
		t.Errorf("GPUType(unknown): %v, want not_found", err)
	}
}

func TestSpotPod(t *testing.T) {
	t.Parallel()
	f := startFake(t, fakecloud.Config{})
	c := newClient(f.URL, testKey)
	ctx := waitCtx(t)

	price, err := c.SpotPrice(ctx, rtx4090, 2)
	if err != nil {
		t.Fatalf("SpotPrice: %v", err)
	}
	if !near(price.MinimumBidPerGPU, 0.204) || !near(price.OnDemandPerGPU, 0.34) || price.StockStatus != "High" {
		t.Errorf("SpotPrice = %+v; want bid 0.204, on demand 0.34, stock High", price)
	}
	if _, err := c.SpotPrice(ctx, "NVIDIA Imaginary 9000", 1); cloudapi.ReasonOf(err) != cloudapi.ReasonInvalid {
		t.Errorf("SpotPrice(unknown): %v, want reason %s", err, cloudapi.ReasonInvalid)
	}

	key := authorizedKey(t)
	req := runpod.SpotPodRequest{Name: "tr-spot-1", Image: image, GPUTypeID: rtx4090, GPUCount: 2, Cloud: "secure",
		BidPerGPU: price.MinimumBidPerGPU, Env: map[string]string{"PUBLIC_KEY": key, "B": "2", "A": "1"}, Args: "sleep infinity", ContainerDisk: 20}
	id, cost, err := c.CreateSpotPod(ctx, req)
	if err != nil {
		t.Fatalf("CreateSpotPod: %v", err)
	}
	if id == "" || !near(cost, 2*price.MinimumBidPerGPU) {
		t.Errorf("CreateSpotPod = %q, %v; want an id at %v", id, cost, 2*price.MinimumBidPerGPU)
	}
	pod, err := c.WaitRunning(ctx, id)
	if err != nil {
		t.Fatalf("WaitRunning: %v", err)
	}
	if pod.Name != req.Name || pod.GPU == nil || pod.GPU.Count != 2 || pod.Env["A"] != "1" || pod.Env["B"] != "2" || !near(pod.Cost, cost) {
		t.Errorf("spot pod = %+v; want the request's name, 2 GPUs, env and cost", pod)
	}
	ms := f.machines()
	if len(ms) != 1 || !ms[0].Interruptible || !slices.Equal(ms[0].AuthorizedKeys, []string{key}) {
		t.Errorf("fake machines = %+v; want one interruptible machine with the key", ms)
	}

	low := req
	low.Name, low.BidPerGPU = "tr-spot-2", price.MinimumBidPerGPU/2
	if _, _, err := c.CreateSpotPod(ctx, low); cloudapi.ReasonOf(err) != cloudapi.ReasonInvalid {
		t.Errorf("CreateSpotPod below the minimum bid: %v, want reason %s", err, cloudapi.ReasonInvalid)
	}
	deletePod(t, c, id)
	if ms := f.machines(); len(ms) != 0 {
		t.Errorf("fake machines after delete = %+v, want none", ms)
	}
}

// RunPod's error bodies are classified by status and, for 400s, by their text.
func TestErrorDecoding(t *testing.T) {
	t.Parallel()
	problem := func(status int, detail string) string {
		b, _ := json.Marshal(map[string]any{"title": http.StatusText(status), "status": status, "detail": detail})
		return string(b)
	}
	cases := []struct {
		name   string
		status int
		body   string
		want   cloudapi.Reason
		text   string // in the error's message
	}{
		{"payment required", http.StatusPaymentRequired, problem(402, "Your account balance is insufficient."), cloudapi.ReasonQuota, "balance"},
		{"payment required, no body", http.StatusPaymentRequired, "", cloudapi.ReasonQuota, ""},
		{"no capacity", http.StatusBadRequest, problem(400, "There are no longer any instances available with the requested specifications. Please refresh and try again."), cloudapi.ReasonNoCapacity, "no longer any instances"},
		{"low balance in a 400", http.StatusBadRequest, problem(400, "Your balance is too low to rent this pod."), cloudapi.ReasonQuota, "too low"},
		{"other bad request", http.StatusBadRequest, problem(400, `GPU type "NVIDIA Imaginary 9000" not found`), cloudapi.ReasonInvalid, "Imaginary"},
		{"validation", http.StatusUnprocessableEntity, `{"title":"Unprocessable Entity","status":422,"detail":"Request validation failed.","errors":["$.gpu.kind: unknown property"]}`, cloudapi.ReasonInvalid, "$.gpu.kind: unknown property"},
		{"not a problem body", http.StatusBadRequest, "<html>bad gateway</html>", cloudapi.ReasonInvalid, "<html>"},
	}
	for _, tc := range cases {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(tc.status)
			_, _ = io.WriteString(w, tc.body)
		}))
		_, err := newClient(srv.URL, testKey).CreatePod(t.Context(), podRequest("tr-decode-1"))
		srv.Close()
		var ce *cloudapi.Error
		switch {
		case err == nil:
			t.Errorf("%s: CreatePod succeeded", tc.name)
		case cloudapi.ReasonOf(err) != tc.want:
			t.Errorf("%s: reason of %v = %s, want %s", tc.name, err, cloudapi.ReasonOf(err), tc.want)
		case !strings.Contains(err.Error(), cloudapi.Marker(tc.want)):
			t.Errorf("%s: %v lacks the marker %s", tc.name, err, cloudapi.Marker(tc.want))
		case tc.text != "" && (!errors.As(err, &ce) || !strings.Contains(ce.Message, tc.text)):
			t.Errorf("%s: message of %v lacks %q", tc.name, err, tc.text)
		case ce != nil && ce.Status != tc.status:
			t.Errorf("%s: status %d, want %d", tc.name, ce.Status, tc.status)
		}
	}
}

// GraphQL answers failures as HTTP 200 with errors[]; they are classified by their text.
func TestGraphQLErrorDecoding(t *testing.T) {
	t.Parallel()
	cases := []struct {
		message string
		want    cloudapi.Reason
	}{
		{"There are no longer any instances available with enough disk space.", cloudapi.ReasonNoCapacity},
		{"Unauthorized", cloudapi.ReasonAuth},
		{`GPU type "x" not found`, cloudapi.ReasonNotFound},
		{"Your bid price is too low", cloudapi.ReasonInvalid},
	}
	for _, tc := range cases {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/graphql" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"data": nil, "errors": []map[string]string{{"message": tc.message}}})
		}))
		_, _, err := newClient(srv.URL, testKey).CreateSpotPod(t.Context(), runpod.SpotPodRequest{Name: "tr-gql-1", Image: image, GPUTypeID: rtx4090, BidPerGPU: 1})
		srv.Close()
		if cloudapi.ReasonOf(err) != tc.want || !strings.Contains(err.Error(), tc.message) {
			t.Errorf("errors[%q]: %v, want reason %s and the message", tc.message, err, tc.want)
		}
	}
}
