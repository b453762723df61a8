package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/servicetest"
	"github.com/understudy-ai/training-service/webhook"
)

type hookDelivery struct {
	header http.Header
	body   []byte
}

// TestWebhookEveryStatusChange runs a real short job with --webhook-url and checks that the
// receiver got every status change, in order, each signed with the secret, under a delivery
// id of its own, with the job's status document as its body; and that /metrics on the API's
// listener needs the token and counts the job.
func TestWebhookEveryStatusChange(t *testing.T) {
	bin, python, model := servicetest.Prerequisites(t)
	const secret = "e2e-webhook-secret"

	var mu sync.Mutex
	var got []hookDelivery
	// The first attempt of the first delivery fails: the retry must carry the same id.
	failedOnce := false
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if !failedOnce {
			failedOnce = true
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		got = append(got, hookDelivery{r.Header.Clone(), body})
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(recv.Close)

	secretFile := filepath.Join(t.TempDir(), "webhook-secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := servicetest.New(t, bin, python)
	tok := make([]byte, 32)
	rand.Read(tok)
	s.Token = hex.EncodeToString(tok)
	s.Args = append(s.Args, "--webhook-url", recv.URL+"/hooks/understudy", "--webhook-secret-file", secretFile)
	s.Start()

	const id = "e2e-webhook"
	dataset := servicetest.WritePairs(t, 16)
	if code := s.Request("POST", "/api/v1/training/start", startBody(id, model, dataset, 16,
		map[string]any{"epochs": 1, "max_seq_len": 64, "batch_size": 8}), nil); code != 202 {
		t.Fatalf("start: %d", code)
	}
	j := s.WaitFor(id, 5*time.Minute, "a terminal status", terminal)
	if j.Status != "completed" {
		t.Fatalf("job ended %s: %+v", j.Status, j.Error)
	}
	want := []string{"queued", "provisioning", "uploading", "training", "downloading", "tearing_down", "completed"}
	deadline := time.Now().Add(30 * time.Second)
	var deliveries []hookDelivery
	for {
		mu.Lock()
		deliveries = slices.Clone(got)
		mu.Unlock()
		if len(deliveries) >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	var statuses []string
	ids := map[string]bool{}
	for i, d := range deliveries {
		if err := webhook.Verify(secret, d.header.Get(webhook.HeaderSignature), d.body, 5*time.Minute); err != nil {
			t.Errorf("delivery %d: %v", i, err)
		}
		did := d.header.Get(webhook.HeaderDelivery)
		if did == "" || ids[did] {
			t.Errorf("delivery %d: id %q missing or reused", i, did)
		}
		ids[did] = true
		var doc struct {
			TrainID string `json:"train_id"`
			Status  string `json:"status"`
		}
		if err := json.Unmarshal(d.body, &doc); err != nil {
			t.Fatalf("delivery %d: %v: %s", i, err, d.body)
		}
		if doc.TrainID != id || doc.Status != d.header.Get(webhook.HeaderStatus) || d.header.Get(webhook.HeaderEvent) != webhook.EventStatusChanged {
			t.Errorf("delivery %d: body %s/%s, headers %v", i, doc.TrainID, doc.Status, d.header)
		}
		statuses = append(statuses, doc.Status)
		// Each body is the status document: it matches the status response's schema.
		s.CheckResponse("GET", "/api/v1/training/"+id+"/status",
			&http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}}}, d.body)
	}
	if !slices.Equal(statuses, want) {
		t.Fatalf("deliveries %v, want %v", statuses, want)
	}
	if deliveries[0].header.Get(webhook.HeaderAttempt) != "2" {
		t.Errorf("the first delivery, refused once, arrived at attempt %q", deliveries[0].header.Get(webhook.HeaderAttempt))
	}
	// The last delivery is the finished job, which no longer changes: it equals GET status.
	var last, now map[string]any
	if err := json.Unmarshal(deliveries[len(deliveries)-1].body, &last); err != nil {
		t.Fatal(err)
	}
	s.Request("GET", "/api/v1/training/"+id+"/status", nil, &now)
	lastRaw, _ := json.Marshal(last)
	nowRaw, _ := json.Marshal(now)
	if string(lastRaw) != string(nowRaw) {
		t.Errorf("the completed delivery differs from GET status:\n%s\n%s", lastRaw, nowRaw)
	}

	// /metrics on the API's listener needs the token, and counts the job.
	resp, err := http.Get("http://" + s.Addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/metrics without the token: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", "http://"+s.Addr+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+s.Token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range []string{
		`understudy_jobs_finished_total{provider="local",status="completed"} 1`,
		`understudy_webhook_deliveries_total{result="delivered"} 7`,
		`understudy_machines_held{provider="local"} 0`,
		`understudy_phase_duration_seconds_count{phase="training",provider="local"} 1`,
	} {
		if !strings.Contains(string(text), line) {
			t.Errorf("/metrics lacks %q:\n%s", line, text)
		}
	}
}
