package job

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestEveryPathToTerminalPassesTeardown(t *testing.T) {
	// From any status that may hold a machine, no move reaches a terminal status except
	// through tearing_down.
	for from, tos := range transitions {
		for _, to := range tos {
			if to.Terminal() && from != StatusTearingDown && from != StatusQueued {
				t.Errorf("%s → %s skips teardown", from, to)
			}
		}
	}
	for _, s := range Statuses {
		if s.Terminal() && len(transitions[s]) > 0 {
			t.Errorf("terminal %s has moves out", s)
		}
		if !s.Terminal() && len(transitions[s]) == 0 {
			t.Errorf("%s is a dead end", s)
		}
	}
}

func TestCheckTransition(t *testing.T) {
	if err := CheckTransition(StatusQueued, StatusProvisioning); err != nil {
		t.Fatal(err)
	}
	err := CheckTransition(StatusTraining, StatusCompleted)
	if CodeOf(err) != CodeFailedPrecondition || ReasonOf(err) != "invalid_transition" {
		t.Fatalf("got %v", err)
	}
}

func TestErrorHelpers(t *testing.T) {
	inner := errors.New("dial tcp: secret detail")
	err := fmt.Errorf("outer: %w", Wrap(CodeUnavailable, inner, "reach machine"))
	if CodeOf(err) != CodeUnavailable || MessageOf(err) != "reach machine" || !errors.Is(err, inner) {
		t.Fatalf("wrap: %v %v %q", CodeOf(err), err, MessageOf(err))
	}
	if MessageOf(inner) != "internal error" || CodeOf(inner) != CodeUnknown {
		t.Fatal("plain errors must not leak their text")
	}
	r := WithReason(err, CodeInternal, "teardown_failed")
	if ReasonOf(r) != "teardown_failed" || CodeOf(r) != CodeUnavailable {
		t.Fatalf("reason: %v %v", ReasonOf(r), CodeOf(r))
	}
	if !IDPattern.MatchString("a.b-c_1") || IDPattern.MatchString("-a") || IDPattern.MatchString("a/b") {
		t.Fatal("IDPattern")
	}
}

func TestCostAddsUpEveryMachine(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	j := &Job{Machine: &Machine{HourlyPriceUSD: 2}}
	j.Internal.ProvisionedAt = t0
	if got := j.Cost(t0.Add(30 * time.Minute)); got != 1 {
		t.Fatalf("first machine after 30m: %v, want 1", got)
	}
	j.ReleaseMachine(t0.Add(time.Hour))
	if j.CostUSD != 2 || !j.Internal.ProvisionedAt.IsZero() || j.Cost(t0.Add(5*time.Hour)) != 2 {
		t.Fatalf("after release: cost %v, provisioned %v, later %v; want 2 that no longer grows",
			j.CostUSD, j.Internal.ProvisionedAt, j.Cost(t0.Add(5*time.Hour)))
	}
	// A second machine of the same job (another attempt) adds to the first.
	j.Machine = &Machine{HourlyPriceUSD: 4}
	j.Internal.ProvisionedAt = t0.Add(2 * time.Hour)
	j.ReleaseMachine(t0.Add(2*time.Hour + 15*time.Minute))
	if j.CostUSD != 3 {
		t.Fatalf("two machines: %v, want 2 + 4×0.25 = 3", j.CostUSD)
	}
}
