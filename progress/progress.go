// Package progress reads the training runtime's progress protocol (docs/progress-protocol.md):
// JSON lines on the runtime's stdout. The Python side lives in trainer/; both test against
// the shared vectors in testdata/progress/.
package progress

import (
	"encoding/json"
	"errors"
)

// Version is the protocol version this reader understands.
const Version = 1

// MaxLineBytes is the longest line a reader must accept.
const MaxLineBytes = 64 << 10

// Event kinds.
const (
	EventStart      = "start"
	EventStep       = "step"
	EventEval       = "eval"
	EventCheckpoint = "checkpoint"
	EventLog        = "log"
	EventDone       = "done"
	EventError      = "error"
)

// StreamStderr marks a log event that carries a line of the runtime's stderr.
const StreamStderr = "stderr"

// Exit codes of the runtime.
const (
	ExitOK        = 0
	ExitFailed    = 1
	ExitBadInput  = 2
	ExitPreempted = 75
)

// File is one output file listed in a done event.
type File struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Event is one decoded line. Fields not used by an event kind stay zero.
type Event struct {
	V     int     `json:"v"`
	Event string  `json:"event"`
	Time  float64 `json:"time"`

	// start
	Model           string         `json:"model,omitempty"`
	Epochs          int            `json:"epochs,omitempty"`
	PairsUsed       int            `json:"pairs_used,omitempty"`
	PairsSkipped    int            `json:"pairs_skipped,omitempty"`
	Device          string         `json:"device,omitempty"`
	GPU             *string        `json:"gpu,omitempty"`
	ResumedFromStep int            `json:"resumed_from_step,omitempty"`
	Hyperparameters map[string]any `json:"hyperparameters,omitempty"`

	// step, eval, checkpoint
	Step            int      `json:"step,omitempty"`
	TotalSteps      int      `json:"total_steps,omitempty"`
	Epoch           float64  `json:"epoch,omitempty"`
	Loss            *float64 `json:"loss,omitempty"`
	LearningRate    *float64 `json:"learning_rate,omitempty"`
	TokensPerSecond float64  `json:"tokens_per_second,omitempty"`
	MFU             *float64 `json:"mfu,omitempty"`
	ETASeconds      *float64 `json:"eta_seconds,omitempty"`
	// GPUUtilization (0..1) and GPUMemoryBytes are sampled on the machine at a step; nil on a
	// machine without a GPU, or when the runtime could not sample them.
	GPUUtilization *float64 `json:"gpu_utilization,omitempty"`
	GPUMemoryBytes *int64   `json:"gpu_memory_bytes,omitempty"`
	EvalLoss       *float64 `json:"eval_loss,omitempty"`
	Perplexity     *float64 `json:"perplexity,omitempty"`
	Phase          string   `json:"phase,omitempty"`
	Path           string   `json:"path,omitempty"`
	Reason         string   `json:"reason,omitempty"`

	// log
	Level   string `json:"level,omitempty"`
	Message string `json:"message,omitempty"`
	// Stream is StreamStderr for a line of the runtime's stderr (Message holds it), empty for
	// the runtime's own notes. StderrOffset is then the byte offset in the runtime's stderr
	// file just past that line: what the file holds beyond it was not streamed.
	Stream       string `json:"stream,omitempty"`
	StderrOffset int64  `json:"stderr_offset,omitempty"`

	// done
	Files     []File         `json:"files,omitempty"`
	Metrics   map[string]any `json:"metrics,omitempty"`
	OutputDir string         `json:"output_dir,omitempty"`

	// error
	Code string `json:"code,omitempty"`
}

// ErrIgnored marks a line a reader skips: not a JSON object, an unknown event, or a newer
// protocol version. Such lines are logged, never fatal.
var ErrIgnored = errors.New("not a progress event")

var known = map[string]bool{
	EventStart: true, EventStep: true, EventEval: true, EventCheckpoint: true,
	EventLog: true, EventDone: true, EventError: true,
}

// Parse decodes one line. Lines that are not progress events return ErrIgnored.
func Parse(line []byte) (Event, error) {
	var e Event
	if len(line) == 0 || len(line) > MaxLineBytes || line[0] != '{' {
		return e, ErrIgnored
	}
	if err := json.Unmarshal(line, &e); err != nil {
		return Event{}, ErrIgnored
	}
	if e.V != Version || !known[e.Event] {
		return Event{}, ErrIgnored
	}
	return e, nil
}
