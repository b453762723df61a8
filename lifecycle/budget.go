package lifecycle

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/understudy-ai/training-service/job"
)

// watchBudget checks the job's cost against its max_cost_usd every BudgetCheckEvery until
// the returned stop is called, and stops the job (its context's cause says why) once the
// cost reaches it. j must hold the job's machine and when it was provisioned.
func (d *Driver) watchBudget(ctx context.Context, j *job.Job, rs *runState) (stop func()) {
	if j.MaxCostUSD <= 0 {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(d.cfg.BudgetCheckEvery)
		defer t.Stop()
		for {
			if c := j.Cost(time.Now()); c >= j.MaxCostUSD {
				d.log.Info("job reached its budget", "train_id", j.TrainID, "cost_usd", c, "max_cost_usd", j.MaxCostUSD)
				rs.cancel(&budgetExceeded{msg: fmt.Sprintf(
					"the job's cost reached its max_cost_usd of $%.4f ($%.4f after %s on a $%.4f/h machine) and the job was stopped",
					j.MaxCostUSD, c, time.Since(j.Internal.ProvisionedAt).Round(time.Second), j.Machine.HourlyPriceUSD)})
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}

// spend keeps the hourly prices of the machines the service holds, for --max-hourly-spend.
type spend struct {
	limit float64 // USD per hour; 0: no cap

	mu   sync.Mutex
	held map[string]float64 // train_id → hourly price of its machine (or of the one it expects)
	// seen is the last price seen per kind of machine (provider, GPU type, spot), so that a
	// job whose machine is known to exceed the cap waits before it makes one.
	seen map[string]float64
	// freed is closed, and replaced, whenever a machine is let go.
	freed chan struct{}
}

func newSpend(limit float64) *spend {
	return &spend{limit: limit, held: map[string]float64{}, seen: map[string]float64{}, freed: make(chan struct{})}
}

func machineKind(sp job.Spec) string {
	return fmt.Sprintf("%s|%s|%t", sp.Provider, sp.GPUType, sp.Spot)
}

func (s *spend) totalLocked(except string) float64 {
	var t float64
	for id, p := range s.held {
		if id != except {
			t += p
		}
	}
	return t
}

// admit waits until the job may make a machine: until the machines held leave room under
// the cap for one more (for the price last seen for this kind of machine, when one was). It
// reserves that price for the job. A machine known to cost more than the whole cap is a
// budget_exceeded error at once: it could never be admitted.
func (d *Driver) admit(ctx context.Context, j *job.Job) error {
	s := d.spend
	if s.limit <= 0 {
		return nil
	}
	told := false
	for {
		s.mu.Lock()
		price, known := s.seen[machineKind(j.Spec)]
		total := s.totalLocked(j.TrainID)
		freed := s.freed
		if known && price > s.limit {
			s.mu.Unlock()
			return &job.Error{Code: job.CodeResourceExhausted, Reason: job.ReasonBudgetExceeded, Message: fmt.Sprintf(
				"the job's machine costs $%.4f/h, more than the service's --max-hourly-spend of $%.4f/h", price, s.limit)}
		}
		if total < s.limit && total+price <= s.limit {
			s.held[j.TrainID] = price
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		if !told {
			told = true
			d.event(ctx, j.TrainID, "waiting_for_budget", job.StatusQueued, fmt.Sprintf(
				"waiting: the machines the service holds cost $%.4f/h and its --max-hourly-spend is $%.4f/h", total, s.limit), nil)
		}
		select {
		case <-freed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// hold records the job's machine at its price. With check, a machine that takes the
// service's hourly spend over the cap is refused with budget_exceeded (the caller tears it
// down); without, it is recorded as it is (a machine the job already held before a restart).
func (d *Driver) hold(j *job.Job, price float64, check bool) error {
	s := d.spend
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen[machineKind(j.Spec)] = price
	total := s.totalLocked(j.TrainID)
	if check && s.limit > 0 && total+price > s.limit {
		delete(s.held, j.TrainID)
		s.signalLocked()
		return &job.Error{Code: job.CodeResourceExhausted, Reason: job.ReasonBudgetExceeded, Message: fmt.Sprintf(
			"the job's machine costs $%.4f/h, which would take the service's hourly spend from $%.4f/h over its --max-hourly-spend of $%.4f/h; the machine was released",
			price, total, s.limit)}
	}
	s.held[j.TrainID] = price
	return nil
}

// release lets the job's machine (or reservation) go.
func (d *Driver) release(trainID string) {
	s := d.spend
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.held[trainID]; ok {
		delete(s.held, trainID)
		s.signalLocked()
	}
}

func (s *spend) signalLocked() {
	close(s.freed)
	s.freed = make(chan struct{})
}
