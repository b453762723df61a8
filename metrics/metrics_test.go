package metrics

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/lifecycle"
)

// run feeds m the changes of one job through the statuses, t0 plus the given seconds each.
type feeder struct {
	m   *Metrics
	j   *job.Job
	now time.Time
}

func newFeeder(m *Metrics, id, provider string) *feeder {
	t0 := time.Unix(1_700_000_000, 0).UTC()
	f := &feeder{m: m, now: t0, j: &job.Job{Spec: job.Spec{TrainID: id, Provider: provider}, Status: job.StatusQueued,
		Timestamps: map[job.Status]time.Time{job.StatusQueued: t0}, CreatedAt: t0, UpdatedAt: t0}}
	m.JobChanged(context.Background(), lifecycle.Change{Kind: lifecycle.ChangeStatus, Job: f.copy()})
	return f
}

func (f *feeder) copy() *job.Job { c := *f.j; return &c }

func (f *feeder) move(after time.Duration, to job.Status, fn func(*job.Job)) {
	f.now = f.now.Add(after)
	from := f.j.Status
	f.j.Status, f.j.UpdatedAt = to, f.now
	if fn != nil {
		fn(f.j)
	}
	f.m.JobChanged(context.Background(), lifecycle.Change{Kind: lifecycle.ChangeStatus, Job: f.copy(), From: from})
}

func (f *feeder) progress(after time.Duration, fn func(*job.Job)) {
	f.now = f.now.Add(after)
	f.j.UpdatedAt = f.now
	fn(f.j)
	f.m.JobChanged(context.Background(), lifecycle.Change{Kind: lifecycle.ChangeProgress, Job: f.copy()})
}

func ptr[T any](v T) *T { return &v }

func TestJobLifecycleMetrics(t *testing.T) {
	m := New()
	f := newFeeder(m, "a", "runpod")
	if v := testutil.ToFloat64(m.jobs.WithLabelValues("queued", "runpod")); v != 1 {
		t.Fatalf("queued = %v", v)
	}
	f.move(2*time.Second, job.StatusProvisioning, nil)
	f.move(40*time.Second, job.StatusUploading, func(j *job.Job) {
		j.Machine = &job.Machine{HourlyPriceUSD: 3.6}
		j.Internal.ProvisionedAt = f.now
	})
	if v := testutil.ToFloat64(m.machines.WithLabelValues("runpod")); v != 1 {
		t.Fatalf("machines held = %v", v)
	}
	f.move(10*time.Second, job.StatusTraining, nil)
	f.progress(5*time.Second, func(j *job.Job) {
		j.CostUSD = 0.05
		j.Progress.GPUUtilization, j.Progress.GPUMemoryBytes = ptr(0.87), ptr(int64(12<<30))
	})
	if v := testutil.ToFloat64(m.gpuUtil.WithLabelValues("a", "runpod")); v != 0.87 {
		t.Fatalf("gpu utilization = %v", v)
	}
	if v := testutil.ToFloat64(m.gpuMem.WithLabelValues("a", "runpod")); v != float64(12<<30) {
		t.Fatalf("gpu memory = %v", v)
	}
	f.move(100*time.Second, job.StatusDownloading, func(j *job.Job) { j.CostUSD = 0.1 })
	if n := testutil.CollectAndCount(m.gpuUtil); n != 0 {
		t.Fatalf("gpu series left after training: %d", n)
	}
	f.move(3*time.Second, job.StatusTearingDown, nil)
	f.move(7*time.Second, job.StatusCompleted, func(j *job.Job) {
		j.CostUSD = 0.16
		j.Internal.ProvisionedAt = time.Time{}
	})

	err := testutil.CollectAndCompare(m.jobs, strings.NewReader(`
# HELP understudy_jobs Jobs not yet terminal that this instance drives, by status and provider.
# TYPE understudy_jobs gauge
understudy_jobs{provider="runpod",status="downloading"} 0
understudy_jobs{provider="runpod",status="provisioning"} 0
understudy_jobs{provider="runpod",status="queued"} 0
understudy_jobs{provider="runpod",status="tearing_down"} 0
understudy_jobs{provider="runpod",status="training"} 0
understudy_jobs{provider="runpod",status="uploading"} 0
`))
	if err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(m.finished.WithLabelValues("completed", "runpod")); v != 1 {
		t.Fatalf("finished = %v", v)
	}
	if v := testutil.ToFloat64(m.machines.WithLabelValues("runpod")); v != 0 {
		t.Fatalf("machines held after the end = %v", v)
	}
	if v := testutil.ToFloat64(m.cost.WithLabelValues("runpod")); v < 0.159 || v > 0.161 {
		t.Fatalf("cost = %v", v)
	}
	if got := testutil.CollectAndCount(m.phase); got != 6 {
		t.Fatalf("%d phase series, want 6 (one per phase left)", got)
	}
	if len(m.live) != 0 {
		t.Fatalf("a finished job is still tracked: %v", m.live)
	}
}

// histogram renders one single-observation series of the phase histogram.
func histogram(phase string, v float64) string {
	var b strings.Builder
	for _, le := range []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400} {
		n := 0
		if v <= le {
			n = 1
		}
		b.WriteString("understudy_phase_duration_seconds_bucket{phase=\"" + phase + "\",provider=\"runpod\",le=\"" + fmtFloat(le) + "\"} " + fmtFloat(float64(n)) + "\n")
	}
	b.WriteString("understudy_phase_duration_seconds_bucket{phase=\"" + phase + "\",provider=\"runpod\",le=\"+Inf\"} 1\n")
	b.WriteString("understudy_phase_duration_seconds_sum{phase=\"" + phase + "\",provider=\"runpod\"} " + fmtFloat(v) + "\n")
	b.WriteString("understudy_phase_duration_seconds_count{phase=\"" + phase + "\",provider=\"runpod\"} 1\n")
	return b.String()
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

func TestPhaseDurations(t *testing.T) {
	m := New()
	f := newFeeder(m, "p", "runpod")
	f.move(2*time.Second, job.StatusProvisioning, nil)
	f.move(40*time.Second, job.StatusUploading, nil)
	err := testutil.CollectAndCompare(m.phase, strings.NewReader(`
# HELP understudy_phase_duration_seconds Time a job spent in a status before it left it, by phase (the status) and provider.
# TYPE understudy_phase_duration_seconds histogram
`+histogram("provisioning", 40)+histogram("queued", 2)))
	if err != nil {
		t.Fatal(err)
	}
}

func TestProvisioningFailuresByCode(t *testing.T) {
	m := New()
	for i, code := range []string{job.ReasonNoCapacity, job.ReasonNoCapacity, job.ReasonProvisionFailed} {
		f := newFeeder(m, "f"+string(rune('0'+i)), "lambda")
		f.move(time.Second, job.StatusProvisioning, nil)
		f.move(time.Second, job.StatusTearingDown, func(j *job.Job) {
			j.Internal.Outcome = &job.Outcome{Status: job.StatusFailed, Failure: &job.Failure{Code: code}}
		})
		f.move(time.Second, job.StatusFailed, nil)
	}
	// A job cancelled while provisioning is no provisioning failure.
	f := newFeeder(m, "c", "lambda")
	f.move(time.Second, job.StatusProvisioning, nil)
	f.move(time.Second, job.StatusTearingDown, func(j *job.Job) { j.Internal.Outcome = &job.Outcome{Status: job.StatusCancelled} })
	err := testutil.CollectAndCompare(m.provisionFailures, strings.NewReader(`
# HELP understudy_provisioning_failures_total Jobs whose provisioning failed, by the job's error code (no_capacity, provider_auth, provision_failed, …) and provider.
# TYPE understudy_provisioning_failures_total counter
understudy_provisioning_failures_total{code="no_capacity",provider="lambda"} 2
understudy_provisioning_failures_total{code="provision_failed",provider="lambda"} 1
`))
	if err != nil {
		t.Fatal(err)
	}
}

func TestResumedJobCounted(t *testing.T) {
	m := New()
	t0 := time.Now().Add(-time.Minute)
	j := &job.Job{Spec: job.Spec{TrainID: "r", Provider: "aws"}, Status: job.StatusTraining, CostUSD: 2,
		Timestamps: map[job.Status]time.Time{job.StatusTraining: t0}, UpdatedAt: t0}
	j.Internal.ProvisionedAt = t0
	m.JobChanged(context.Background(), lifecycle.Change{Kind: lifecycle.ChangeResumed, Job: j})
	if v := testutil.ToFloat64(m.jobs.WithLabelValues("training", "aws")); v != 1 {
		t.Fatalf("training = %v", v)
	}
	if v := testutil.ToFloat64(m.machines.WithLabelValues("aws")); v != 1 {
		t.Fatalf("machines = %v", v)
	}
	// What the job cost before this instance took it up is not counted again.
	if v := testutil.ToFloat64(m.cost.WithLabelValues("aws")); v != 0 {
		t.Fatalf("cost = %v", v)
	}
	j2 := *j
	j2.CostUSD = 2.5
	m.JobChanged(context.Background(), lifecycle.Change{Kind: lifecycle.ChangeProgress, Job: &j2})
	if v := testutil.ToFloat64(m.cost.WithLabelValues("aws")); v != 0.5 {
		t.Fatalf("cost = %v", v)
	}
}

func TestWebhookDeliveries(t *testing.T) {
	m := New()
	m.WebhookDelivery("delivered")
	m.WebhookDelivery("delivered")
	m.WebhookDelivery("dropped")
	if v := testutil.ToFloat64(m.webhooks.WithLabelValues("delivered")); v != 2 {
		t.Fatalf("delivered = %v", v)
	}
	if v := testutil.ToFloat64(m.webhooks.WithLabelValues("dropped")); v != 1 {
		t.Fatalf("dropped = %v", v)
	}
}
