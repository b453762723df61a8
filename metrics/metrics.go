package metrics

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/lifecycle"
)

// Path is where the metrics are served.
const Path = "/metrics"

// Metrics holds the service's collectors in a registry of its own. It is safe for
// concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	jobs              *prometheus.GaugeVec
	finished          *prometheus.CounterVec
	phase             *prometheus.HistogramVec
	provisionFailures *prometheus.CounterVec
	machines          *prometheus.GaugeVec
	cost              *prometheus.CounterVec
	gpuUtil           *prometheus.GaugeVec
	gpuMem            *prometheus.GaugeVec
	webhooks          *prometheus.CounterVec

	mu   sync.Mutex
	live map[string]*liveJob // train_id → what was last seen of a non-terminal job
}

type liveJob struct {
	status   job.Status
	provider string
	since    time.Time // when it entered status
	held     bool      // holds a machine
	cost     float64   // CostUSD last seen
	gpu      bool      // has GPU samples exported
}

// New returns the metrics, registered with the Go runtime's and the process's collectors.
func New() *Metrics {
	m := &Metrics{
		reg:  prometheus.NewRegistry(),
		live: map[string]*liveJob{},
		jobs: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "understudy_jobs",
			Help: "Jobs not yet terminal that this instance drives, by status and provider."}, []string{"status", "provider"}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "understudy_jobs_finished_total",
			Help: "Jobs that reached a terminal status, by status and provider."}, []string{"status", "provider"}),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "understudy_phase_duration_seconds",
			Help:    "Time a job spent in a status before it left it, by phase (the status) and provider.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400}},
			[]string{"phase", "provider"}),
		provisionFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "understudy_provisioning_failures_total",
			Help: "Jobs whose provisioning failed, by the job's error code (no_capacity, provider_auth, provision_failed, …) and provider."},
			[]string{"code", "provider"}),
		machines: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "understudy_machines_held",
			Help: "Machines the service holds (billable) now, by provider."}, []string{"provider"}),
		cost: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "understudy_cost_usd_total",
			Help: "Estimated USD spent on machines, by provider, as the jobs' costs grow."}, []string{"provider"}),
		gpuUtil: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "understudy_gpu_utilization_ratio",
			Help: "GPU utilisation (0..1) the runtime last sampled on a training job's machine."}, []string{"train_id", "provider"}),
		gpuMem: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "understudy_gpu_memory_bytes",
			Help: "GPU memory in use the runtime last sampled on a training job's machine."}, []string{"train_id", "provider"}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "understudy_webhook_deliveries_total",
			Help: "Webhook deliveries by result: delivered, failed (attempts ran out or refused), dropped (queue full or shutdown)."},
			[]string{"result"}),
	}
	m.reg.MustRegister(m.jobs, m.finished, m.phase, m.provisionFailures, m.machines, m.cost, m.gpuUtil, m.gpuMem, m.webhooks,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry the metrics are in.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// WebhookDelivery counts a webhook delivery's result (webhook.Options.Report).
func (m *Metrics) WebhookDelivery(result string) { m.webhooks.WithLabelValues(result).Inc() }

// JobChanged updates the metrics from a job's change. It only touches memory.
func (m *Metrics) JobChanged(_ context.Context, c lifecycle.Change) {
	j := c.Job
	if j == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	at := j.UpdatedAt
	if at.IsZero() {
		at = time.Now()
	}
	lj := m.live[j.TrainID]
	if lj == nil {
		lj = &liveJob{status: "", provider: j.Provider, since: j.Timestamps[j.Status], cost: j.CostUSD}
		if lj.since.IsZero() {
			lj.since = at
		}
		if c.Kind == lifecycle.ChangeStatus && c.From == "" {
			lj.cost = 0 // a new job: all its cost is this instance's to count
		}
		m.live[j.TrainID] = lj
	}
	if lj.status != j.Status {
		if lj.status != "" {
			m.jobs.WithLabelValues(string(lj.status), lj.provider).Dec()
			if c.Kind == lifecycle.ChangeStatus {
				m.phase.WithLabelValues(string(lj.status), lj.provider).Observe(max(0, at.Sub(lj.since).Seconds()))
			}
		}
		if c.Kind == lifecycle.ChangeStatus && lj.status == job.StatusProvisioning && j.Status == job.StatusTearingDown {
			if o := j.Internal.Outcome; o != nil && o.Failure != nil {
				m.provisionFailures.WithLabelValues(o.Failure.Code, lj.provider).Inc()
			}
		}
		if j.Status.Terminal() {
			m.finished.WithLabelValues(string(j.Status), lj.provider).Inc()
		} else {
			m.jobs.WithLabelValues(string(j.Status), lj.provider).Inc()
		}
		lj.status, lj.since = j.Status, at
	}
	if d := j.CostUSD - lj.cost; d > 0 {
		m.cost.WithLabelValues(lj.provider).Add(d)
		lj.cost = j.CostUSD
	}
	held := !j.Internal.ProvisionedAt.IsZero() && !j.Status.Terminal()
	if held != lj.held {
		if held {
			m.machines.WithLabelValues(lj.provider).Inc()
		} else {
			m.machines.WithLabelValues(lj.provider).Dec()
		}
		lj.held = held
	}
	p := j.Progress
	if j.Status == job.StatusTraining && (p.GPUUtilization != nil || p.GPUMemoryBytes != nil) {
		if p.GPUUtilization != nil {
			m.gpuUtil.WithLabelValues(j.TrainID, lj.provider).Set(*p.GPUUtilization)
		}
		if p.GPUMemoryBytes != nil {
			m.gpuMem.WithLabelValues(j.TrainID, lj.provider).Set(float64(*p.GPUMemoryBytes))
		}
		lj.gpu = true
	} else if lj.gpu && j.Status != job.StatusTraining {
		m.gpuUtil.DeleteLabelValues(j.TrainID, lj.provider)
		m.gpuMem.DeleteLabelValues(j.TrainID, lj.provider)
		lj.gpu = false
	}
	if j.Status.Terminal() {
		delete(m.live, j.TrainID)
	}
}
