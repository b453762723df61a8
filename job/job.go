package job

import (
	"fmt"
	"regexp"
	"time"
)

// Status is where a job is in its life.
type Status string

const (
	StatusQueued       Status = "queued"
	StatusProvisioning Status = "provisioning"
	StatusUploading    Status = "uploading"
	StatusTraining     Status = "training"
	StatusDownloading  Status = "downloading"
	StatusTearingDown  Status = "tearing_down"
	StatusCompleted    Status = "completed"
	StatusFailed       Status = "failed"
	StatusCancelled    Status = "cancelled"
)

// Statuses lists every status in lifecycle order.
var Statuses = []Status{
	StatusQueued, StatusProvisioning, StatusUploading, StatusTraining, StatusDownloading,
	StatusTearingDown, StatusCompleted, StatusFailed, StatusCancelled,
}

// Terminal reports whether no further transition can leave s. A job only becomes terminal
// after its stack has been destroyed (or destroy failed for good, see ReasonTeardownFailed).
func (s Status) Terminal() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCancelled
}

// Valid reports whether s is a known status.
func (s Status) Valid() bool {
	for _, v := range Statuses {
		if v == s {
			return true
		}
	}
	return false
}

// transitions is the one table of allowed moves. Every path to a terminal state passes
// through tearing_down, so no job is terminal while its machine may still exist — except
// queued → cancelled/failed, where no stack was ever created. uploading/training →
// provisioning replaces a machine its cloud took away (a new attempt, see Attempt): the
// old stack is destroyed before the move.
var transitions = map[Status][]Status{
	StatusQueued:       {StatusProvisioning, StatusCancelled, StatusFailed},
	StatusProvisioning: {StatusUploading, StatusTearingDown},
	StatusUploading:    {StatusTraining, StatusProvisioning, StatusTearingDown},
	StatusTraining:     {StatusDownloading, StatusProvisioning, StatusTearingDown},
	StatusDownloading:  {StatusTearingDown},
	StatusTearingDown:  {StatusCompleted, StatusFailed, StatusCancelled},
}

// CanTransition reports whether the table allows from → to.
func CanTransition(from, to Status) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// CheckTransition returns a FailedPrecondition error when from → to is not allowed.
func CheckTransition(from, to Status) error {
	if !CanTransition(from, to) {
		return &Error{Code: CodeFailedPrecondition, Reason: "invalid_transition",
			Message: fmt.Sprintf("job cannot move from %s to %s", from, to)}
	}
	return nil
}

// Reasons reported in a failed job's error. A job that fails on bad input reports the
// runtime's own code instead (invalid_dataset, invalid_model, invalid_hyperparameters).
const (
	ReasonTeardownFailed  = "teardown_failed"
	ReasonProvisionFailed = "provision_failed"
	ReasonUploadFailed    = "upload_failed"
	ReasonTrainingFailed  = "training_failed"
	ReasonDownloadFailed  = "download_failed"
	ReasonMachineLost     = "machine_lost"
	ReasonTimeout         = "timeout"
	ReasonInterrupted     = "interrupted"
	ReasonInternal        = "internal"
	ReasonVerifyFailed    = "verify_failed"
	ReasonPreempted       = "preempted"
	ReasonInvalidModel    = "invalid_model"
	// ReasonBudgetExceeded: the job's cost reached its max_cost_usd, or its machine would take
	// the service's hourly spend over --max-hourly-spend.
	ReasonBudgetExceeded = "budget_exceeded"
	// Provider failures: no machine of that kind free now, the API key refused, the
	// account's balance or quota exhausted, or the provider not configured at all.
	ReasonNoCapacity            = "no_capacity"
	ReasonProviderAuth          = "provider_auth"
	ReasonProviderQuota         = "provider_quota"
	ReasonProviderNotConfigured = "provider_not_configured"
)

// ProviderReasons are the reasons a provider's own failure keeps all the way to the job's
// error, rather than the phase's generic one.
var ProviderReasons = []string{ReasonNoCapacity, ReasonProviderAuth, ReasonProviderQuota}

// IDPattern is what a train_id must match. It doubles as the stack name, a directory name
// and a storage path segment, so it is deliberately narrow.
var IDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// Hyperparameters are the optional knobs a caller may set; nil means "pick a default".
type Hyperparameters struct {
	Epochs       *int     `json:"epochs,omitempty"`
	LearningRate *float64 `json:"learning_rate,omitempty"`
	BatchSize    *int     `json:"batch_size,omitempty"`
	MaxSeqLen    *int     `json:"max_seq_len,omitempty"`
}

// Spec is what a caller asked for. It is immutable once the job exists; its Fingerprint
// decides whether a repeated start is the same request (200) or a conflict (409).
type Spec struct {
	TrainID            string           `json:"train_id"`
	EndpointID         string           `json:"endpoint_id"`
	Version            int              `json:"version"`
	TrainingPairsCount int              `json:"training_pairs_count"`
	SLMType            string           `json:"slm_type"`
	SourceLLM          string           `json:"source_llm"`
	Provider           string           `json:"provider"`
	DatasetURI         string           `json:"dataset_uri,omitempty"`
	Hyperparameters    *Hyperparameters `json:"hyperparameters,omitempty"`
	MaxDurationSeconds int              `json:"max_duration_seconds,omitempty"`
	// GPUType names the machine's GPU in the provider's terms (a RunPod GPU type id, a Lambda
	// instance type); empty: the provider's configured default.
	GPUType string `json:"gpu_type,omitempty"`
	// Spot asks for an interruptible machine; OnDemandFallback allows an on-demand one when
	// no spot machine can be had.
	Spot             bool `json:"spot,omitempty"`
	OnDemandFallback bool `json:"on_demand_fallback,omitempty"`
	// KeepCheckpoint asks for the runtime's last checkpoint to be stored with the weights
	// when the job is stopped before it finishes (cancel, timeout, budget).
	KeepCheckpoint bool `json:"keep_checkpoint,omitempty"`
	// MaxCostUSD stops the job (failed, budget_exceeded) once its cost reaches it; 0: no limit.
	MaxCostUSD float64 `json:"max_cost_usd,omitempty"`
	// Fingerprint is the sha256 of the canonical request, data included.
	Fingerprint string `json:"fingerprint"`
	// DatasetSHA256 is the hash of the dataset as the service stored it.
	DatasetSHA256 string `json:"dataset_sha256"`
}

// Progress is the latest training progress folded from the runtime's progress stream.
type Progress struct {
	Step            int      `json:"step"`
	TotalSteps      int      `json:"total_steps"`
	Epoch           float64  `json:"epoch"`
	Loss            *float64 `json:"loss"`
	EvalLoss        *float64 `json:"eval_loss"`
	TokensPerSecond float64  `json:"tokens_per_second"`
	ETASeconds      *float64 `json:"eta_seconds"`
	// GPUUtilization (0..1) and GPUMemoryBytes are the latest sample of the machine's GPU
	// (busy fraction, device memory in use) that the runtime reported; absent on a machine
	// without a GPU.
	GPUUtilization *float64 `json:"gpu_utilization,omitempty"`
	GPUMemoryBytes *int64   `json:"gpu_memory_bytes,omitempty"`
}

// Machine describes the machine a job runs on, once provisioned.
type Machine struct {
	InstanceID     string  `json:"instance_id,omitempty"`
	Host           string  `json:"host,omitempty"`
	Port           int     `json:"port,omitempty"`
	User           string  `json:"user,omitempty"`
	HostKey        string  `json:"host_key,omitempty"`
	WorkDir        string  `json:"work_dir,omitempty"`
	GPU            string  `json:"gpu,omitempty"`
	HourlyPriceUSD float64 `json:"hourly_price_usd,omitempty"`
	// HostKeyTrust is "injected" (the service's host key, installed before sshd started) or
	// "first-use" (the cloud would not take it: the key first seen is pinned).
	HostKeyTrust string `json:"host_key_trust,omitempty"`
	// LeaseFile is the file the service touches to keep the machine's dead-man's switch from
	// firing; empty when the machine has none.
	LeaseFile string `json:"lease_file,omitempty"`
}

// ManifestFile is one stored weights file.
type ManifestFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Manifest lists the stored weights and the training metrics.
type Manifest struct {
	Files   []ManifestFile `json:"files"`
	Metrics map[string]any `json:"metrics,omitempty"`
}

// Failure is the client-visible error of a failed job.
type Failure struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Job is a training job as stored.
type Job struct {
	Spec
	Status Status `json:"status"`
	// Revision increases on every write; stores use it for compare-and-set.
	Revision   int64    `json:"-"`
	Progress   Progress `json:"progress"`
	Machine    *Machine `json:"machine,omitempty"`
	CostUSD    float64  `json:"cost_usd"`
	WeightsURI string   `json:"weights_uri,omitempty"`
	// CheckpointURI is where the last checkpoint of a job stopped early was stored (with
	// keep_checkpoint); CheckpointManifest lists its files.
	CheckpointURI      string         `json:"checkpoint_uri,omitempty"`
	CheckpointManifest []ManifestFile `json:"checkpoint_manifest,omitempty"`
	Manifest           *Manifest      `json:"weights_manifest,omitempty"`
	Error              *Failure       `json:"error,omitempty"`
	// Attempts lists every machine the job ran on, oldest first: more than one when a
	// machine was taken away (preempted, lost) and replaced.
	Attempts        []Attempt            `json:"attempts,omitempty"`
	CancelRequested bool                 `json:"cancel_requested"`
	Timestamps      map[Status]time.Time `json:"timestamps"`
	CreatedAt       time.Time            `json:"created_at"`
	UpdatedAt       time.Time            `json:"updated_at"`
	// Internal is what the service keeps about a job that clients never see.
	Internal Internal `json:"-"`
}

// Internal holds a job's private bookkeeping. Stores persist it; the API never shows it.
type Internal struct {
	// ProgressOffset is how far into the machine's progress stream the service has read, so a
	// restarted service reattaches without losing or repeating lines.
	ProgressOffset int64 `json:"progress_offset,omitempty"`
	// Owner names the service instance driving the job, for several replicas on one store.
	Owner string `json:"owner,omitempty"`
	// CompletionTokenSHA256 is the hash of the per-job token that the job's machine presents
	// on the internal completed endpoint.
	CompletionTokenSHA256 string `json:"completion_token_sha256,omitempty"`
	// DatasetPath is the service's own copy of the dataset.
	DatasetPath string `json:"dataset_path,omitempty"`
	// Outcome is the terminal state a job in tearing_down moves to once its stack is gone.
	Outcome *Outcome `json:"outcome,omitempty"`
	// ProvisionedAt is when the current machine became billable, for the cost estimate;
	// zero when the job holds no machine.
	ProvisionedAt time.Time `json:"provisioned_at,omitempty"`
	// CostBefore is what the job's earlier machines cost, each from provisioned until its
	// teardown finished.
	CostBefore float64 `json:"cost_before,omitempty"`
	// Expected maps each output file to the sha256 the runtime reported in its done event.
	Expected map[string]string `json:"expected,omitempty"`
	// Metrics are the runtime's final metrics from its done event.
	Metrics map[string]any `json:"metrics,omitempty"`
	// LastCheckpoint is the newest checkpoint pulled off the machine while it trained; a
	// replacement machine resumes from it.
	LastCheckpoint *StoredCheckpoint `json:"last_checkpoint,omitempty"`
	// Replacing says the job's machine was taken away and its stack destroyed: in
	// provisioning, a fresh machine is to be made (not the old stack's recovered).
	Replacing bool `json:"replacing,omitempty"`
}

// StoredCheckpoint is a checkpoint copied into the weights store.
type StoredCheckpoint struct {
	// Name is the runtime's directory name (step-NNNNNNNN); Step its optimizer step.
	Name string `json:"name"`
	Step int    `json:"step"`
	// Prefix is where in the weights store its files are, Files what they are.
	Prefix string         `json:"prefix"`
	Files  []ManifestFile `json:"files"`
}

// Attempt is one machine a job ran on. A machine taken away while the job trained
// (preempted, lost) is replaced by a new one, and training resumes from the last stored
// checkpoint; the job's attempts list them all, oldest first.
type Attempt struct {
	Number     int        `json:"number"`
	InstanceID string     `json:"instance_id,omitempty"`
	StartedAt  time.Time  `json:"started_at"`
	EndedAt    *time.Time `json:"ended_at,omitempty"`
	// ResumedFromStep is the step of the checkpoint the attempt started from (0: the start);
	// Step the last training step it reported.
	ResumedFromStep int `json:"resumed_from_step"`
	Step            int `json:"step"`
	// Reason is why the machine went: preempted or machine_lost for one taken away, else the
	// job's own end (completed, cancelled, or its error code); Message says more.
	Reason  string  `json:"reason,omitempty"`
	Message string  `json:"message,omitempty"`
	CostUSD float64 `json:"cost_usd"`
}

// StartAttempt records that the job's machine m is up at now: a new attempt, unless the
// newest one is still open (a restart recovered its machine).
func (j *Job) StartAttempt(m Machine, now time.Time) {
	if n := len(j.Attempts); n > 0 && j.Attempts[n-1].EndedAt == nil {
		j.Attempts[n-1].InstanceID = m.InstanceID
		return
	}
	a := Attempt{Number: len(j.Attempts) + 1, InstanceID: m.InstanceID, StartedAt: now}
	if j.Internal.LastCheckpoint != nil {
		a.ResumedFromStep = j.Internal.LastCheckpoint.Step
	}
	j.Attempts = append(j.Attempts, a)
}

// EndAttempt closes the open attempt, if any, at now with reason; call it before
// ReleaseMachine, whose bill it reads.
func (j *Job) EndAttempt(now time.Time, reason, msg string) {
	n := len(j.Attempts)
	if n == 0 || j.Attempts[n-1].EndedAt != nil {
		return
	}
	a := &j.Attempts[n-1]
	a.EndedAt = &now
	a.Step = j.Progress.Step
	if c := j.Internal.LastCheckpoint; c != nil && c.Step > a.Step {
		// The runtime reports steps at intervals; its checkpoint may be newer.
		a.Step = c.Step
	}
	if a.Reason == "" {
		a.Reason, a.Message = reason, msg
	}
	a.CostUSD = max(0, j.Cost(now)-j.Internal.CostBefore)
}

// Outcome is where a job goes after teardown.
type Outcome struct {
	Status  Status   `json:"status"`
	Failure *Failure `json:"failure,omitempty"`
}

// Event is one entry of a job's lifecycle history.
type Event struct {
	ID      int64          `json:"id"`
	TrainID string         `json:"train_id"`
	Time    time.Time      `json:"time"`
	Type    string         `json:"type"`
	Status  Status         `json:"status,omitempty"`
	Message string         `json:"message"`
	Data    map[string]any `json:"data,omitempty"`
}

// Cost is what the job has cost up to now: its earlier machines plus the current machine's
// hourly price for the time it has been held.
func (j *Job) Cost(now time.Time) float64 {
	c := j.Internal.CostBefore
	if j.Machine != nil && j.Machine.HourlyPriceUSD > 0 && !j.Internal.ProvisionedAt.IsZero() {
		c += j.Machine.HourlyPriceUSD * max(0, now.Sub(j.Internal.ProvisionedAt).Hours())
	}
	return c
}

// ReleaseMachine closes the current machine's bill at now, once it is gone: its cost moves
// into CostBefore and CostUSD, so that a later machine of the same job adds to it.
func (j *Job) ReleaseMachine(now time.Time) {
	if j.Internal.ProvisionedAt.IsZero() {
		// Nothing held (a job stored before CostBefore existed keeps its CostUSD).
		j.CostUSD = max(j.CostUSD, j.Internal.CostBefore)
		return
	}
	j.Internal.CostBefore = j.Cost(now)
	j.Internal.ProvisionedAt = time.Time{}
	j.CostUSD = j.Internal.CostBefore
}
