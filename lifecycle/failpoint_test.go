package lifecycle

import (
	"context"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/understudy-ai/training-service/job"
)

func TestParseFailpoints(t *testing.T) {
	for _, tc := range []struct {
		spec    string
		want    []string
		wantErr bool
	}{
		{spec: "", want: nil},
		{spec: "pause:training", want: []string{"pause:training"}},
		{spec: " pause:tearing_down , pause:provisioning", want: []string{"pause:provisioning", "pause:tearing_down"}},
		{spec: "pause:queued", wantErr: true},
		{spec: "pause:completed", wantErr: true},
		{spec: "crash:training", wantErr: true},
		{spec: "training", wantErr: true},
	} {
		fp, err := parseFailpoints(tc.spec)
		if (err != nil) != tc.wantErr {
			t.Errorf("parseFailpoints(%q) error %v, want error %v", tc.spec, err, tc.wantErr)
			continue
		}
		if got := fp.armed(); !tc.wantErr && !equalStrings(got, tc.want) {
			t.Errorf("parseFailpoints(%q) armed %v, want %v", tc.spec, got, tc.want)
		}
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBadFailpointRefusesToStart(t *testing.T) {
	t.Setenv(FailpointEnv, "pause:everywhere")
	_, err := New(Config{DataDir: t.TempDir(), Runtime: fstest.MapFS{}}, nil, newFakeProvisioner(), &fakeConnector{}, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), FailpointEnv) {
		t.Fatalf("New with a failpoint it does not know: %v, want an error naming %s", err, FailpointEnv)
	}
}

// Each armed phase pauses the job where that phase begins, says so in an event, and a
// driver started again without the failpoint takes the job on to completion.
func TestFailpointPausesThePhaseAndTheJobResumes(t *testing.T) {
	for _, phase := range failpointPhases {
		t.Run(string(phase), func(t *testing.T) {
			t.Setenv(FailpointEnv, "pause:"+string(phase))
			h := newHarness(t, Config{})
			h.drv.Start(context.Background())
			h.submit("fp")
			waitEvent(t, h, "fp", "failpoint", phase)
			if j, _ := h.store.JobGet(context.Background(), "fp"); j.Status != phase {
				t.Fatalf("paused in %s, want %s", j.Status, phase)
			}
			// Held there: nothing moves on while paused.
			time.Sleep(200 * time.Millisecond)
			if j, _ := h.store.JobGet(context.Background(), "fp"); j.Status != phase {
				t.Fatalf("moved on to %s while paused in %s", j.Status, phase)
			}
			t.Setenv(FailpointEnv, "")
			h.restart(Config{})
			j := h.waitFor("fp", job.StatusCompleted)
			if h.prov.has("fp") || j.WeightsURI == "" {
				t.Fatalf("after the pause in %s: stack left %v, weights %q", phase, h.prov.has("fp"), j.WeightsURI)
			}
		})
	}
}

func TestCancelEndsAFailpointPause(t *testing.T) {
	t.Setenv(FailpointEnv, "pause:training")
	h := newHarness(t, Config{})
	h.drv.Start(context.Background())
	h.submit("fpc")
	waitEvent(t, h, "fpc", "failpoint", job.StatusTraining)
	if _, err := h.drv.Cancel(context.Background(), "fpc"); err != nil {
		t.Fatal(err)
	}
	h.waitFor("fpc", job.StatusCancelled)
	if h.prov.has("fpc") {
		t.Fatal("stack left behind")
	}
}

func waitEvent(t *testing.T, h *harness, id, typ string, st job.Status) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, _ := h.store.EventList(context.Background(), id)
		for _, e := range evs {
			if e.Type == typ && e.Status == st {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event in %s for %s: %+v", typ, st, id, evs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
