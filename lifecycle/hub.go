package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/understudy-ai/training-service/internal/fsroot"
	"github.com/understudy-ai/training-service/internal/hubcheck"
	"github.com/understudy-ai/training-service/job"
)

// Reasons of a start whose slm_type, taken as a Hugging Face Hub id, was refused by the
// Hub check (Config.Hub). ReasonModelUnavailable is also the runtime's code for a Hub the
// machine cannot reach (docs/progress-protocol.md).
const (
	ReasonModelUnavailable = "model_unavailable"
	ReasonModelNotFound    = "model_not_found"
)

// checkHubModel asks Config.Hub about a slm_type that is not a local path, so that a Hub id
// the service knows to be malformed, missing or out of reach is refused before a stack is
// made. Every error says what slm_type was taken for and what to do instead.
func (d *Driver) checkHubModel(ctx context.Context, slm string) error {
	if d.cfg.Hub == nil || looksLocal(slm) {
		return nil
	}
	err := d.cfg.Hub.Check(ctx, slm)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return &job.Error{Code: job.CodeCanceled, Message: "the request ended before its model was checked", Err: err}
	}
	hub, cause := "the Hub", "no cause given"
	var he *hubcheck.Error
	if errors.As(err, &he) {
		if he.Endpoint != "" {
			hub = "the Hub at " + he.Endpoint
		}
		if he.Cause != "" {
			cause = he.Cause
		}
	}
	taken := fmt.Sprintf("slm_type %q is not a path (a local model begins with /, ./, ../ or file://), so it was taken as a Hugging Face Hub id", slm)
	if dir := d.modelDirNamed(slm); dir != "" {
		taken += fmt.Sprintf(" (to train the model directory %s instead, send slm_type %q)", dir, dir)
	}
	switch {
	case errors.Is(err, hubcheck.ErrInvalidID):
		return &job.Error{Code: job.CodeInvalidArgument, Reason: job.ReasonInvalidModel, Err: err,
			Message: fmt.Sprintf("slm_type %q is neither a model directory under --model-root nor a valid Hugging Face Hub id (it has %s): "+
				"a local model is a path that begins with /, ./, ../ or file://, a Hub id is name or namespace/name, "+
				"of letters, digits, '-', '_' and '.', at most %d characters each", slm, cause, hubcheck.MaxNameLen)}
	case errors.Is(err, hubcheck.ErrNotFound):
		return &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonModelNotFound, Err: err,
			Message: fmt.Sprintf("%s, and %s has no such model that can be downloaded without a token (%s): "+
				"check the id (private and gated models are not available), or give a model directory under --model-root", taken, hub, cause)}
	case errors.Is(err, hubcheck.ErrUnreachable):
		return &job.Error{Code: job.CodeInvalidArgument, Reason: ReasonModelUnavailable, Err: err,
			Message: fmt.Sprintf("%s; %s could not be reached from the service (%s). "+
				"Give a model directory under --model-root, point the service at a Hub it can reach (serve --hub-endpoint, or HF_ENDPOINT), "+
				"or, if the training machines reach the Hub but the service does not, start serve with --hub-check=false", taken, hub, cause)}
	}
	return fmt.Errorf("check hub model: %w", err)
}

// modelDirNamed is the path a client should send for a slm_type that was taken as a Hub id
// but also names a model directory, relative to the service's working directory or to a
// model root: "" when there is none. Only directories under the ModelRoots are looked at,
// so a client learns nothing of the host beyond what it may already train on.
func (d *Driver) modelDirNamed(slm string) string {
	if strings.Contains(slm, "://") || filepath.IsAbs(slm) {
		return ""
	}
	cands := []string{slm}
	for _, r := range d.cfg.ModelRoots {
		cands = append(cands, filepath.Join(r, slm))
	}
	for _, c := range cands {
		p, err := filepath.Abs(c)
		if err != nil {
			continue
		}
		root, rel, err := fsroot.Open(d.cfg.ModelRoots, p)
		if err != nil {
			continue
		}
		fi, err := root.Stat(rel)
		root.Close()
		if err != nil || !fi.IsDir() {
			continue
		}
		if c == slm {
			return "./" + filepath.ToSlash(slm)
		}
		return p
	}
	return ""
}
