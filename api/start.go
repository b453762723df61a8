package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strings"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/lifecycle"
	"github.com/understudy-ai/training-service/trainer"
)

func malformed(reason, format string, args ...any) error {
	return fail(job.CodeMalformed, reason, fmt.Sprintf(format, args...))
}

func invalid(reason, format string, args ...any) error {
	return fail(job.CodeInvalidArgument, reason, fmt.Sprintf(format, args...))
}

// maxDurationSeconds bounds max_duration_seconds: 30 days.
const maxDurationSeconds = 30 * 24 * 3600

// fields reads a JSON object body into its raw fields.
type fields map[string]json.RawMessage

func (f fields) has(name string) bool {
	v, ok := f[name]
	return ok && !bytes.Equal(bytes.TrimSpace(v), []byte("null"))
}

func (f fields) str(name string, required bool) (string, error) {
	if !f.has(name) {
		if required {
			return "", invalid("missing_field", "field %q is required", name)
		}
		return "", nil
	}
	var s string
	if err := json.Unmarshal(f[name], &s); err != nil {
		return "", malformed("invalid_field", "field %q must be a string", name)
	}
	s = strings.TrimSpace(s)
	if required && s == "" {
		return "", invalid("missing_field", "field %q must not be empty", name)
	}
	return s, nil
}

func (f fields) integer(name string, required bool) (int, error) {
	if !f.has(name) {
		if required {
			return 0, invalid("missing_field", "field %q is required", name)
		}
		return 0, nil
	}
	var n float64
	if err := json.Unmarshal(f[name], &n); err != nil {
		return 0, malformed("invalid_field", "field %q must be an integer", name)
	}
	if n != math.Trunc(n) || math.Abs(n) > 1<<53 {
		return 0, malformed("invalid_field", "field %q must be an integer", name)
	}
	return int(n), nil
}

func (f fields) boolean(name string) (bool, error) {
	if !f.has(name) {
		return false, nil
	}
	var b bool
	if err := json.Unmarshal(f[name], &b); err != nil {
		return false, malformed("invalid_field", "field %q must be true or false", name)
	}
	return b, nil
}

func (s *Server) providerNames() string {
	names := make([]string, 0, len(s.providers))
	for n := range s.providers {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// parseStart turns a start body into a request, naming the first problem it finds.
func (s *Server) parseStart(body []byte) (lifecycle.StartRequest, error) {
	var req lifecycle.StartRequest
	var f fields
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&f); err != nil || f == nil {
		return req, malformed("invalid_json", "the request body must be a JSON object")
	}
	if dec.More() {
		return req, malformed("invalid_json", "the request body must hold exactly one JSON object")
	}
	var err error
	sp := &req.Spec
	if sp.TrainID, err = f.str("train_id", true); err != nil {
		return req, err
	}
	if !job.IDPattern.MatchString(sp.TrainID) {
		return req, invalid("invalid_train_id", "train_id %q must match %s", sp.TrainID, job.IDPattern)
	}
	if sp.EndpointID, err = f.str("endpoint_id", true); err != nil {
		return req, err
	}
	if !job.IDPattern.MatchString(sp.EndpointID) {
		return req, invalid("invalid_endpoint_id", "endpoint_id %q must match %s", sp.EndpointID, job.IDPattern)
	}
	if sp.Version, err = f.integer("version", true); err != nil {
		return req, err
	}
	if sp.Version < 1 {
		return req, invalid("invalid_version", "version must be at least 1, got %d", sp.Version)
	}
	if sp.TrainingPairsCount, err = f.integer("training_pairs_count", true); err != nil {
		return req, err
	}
	if sp.TrainingPairsCount < 1 {
		return req, invalid("invalid_training_pairs_count", "training_pairs_count must be at least 1, got %d", sp.TrainingPairsCount)
	}
	if sp.SLMType, err = f.str("slm_type", true); err != nil {
		return req, err
	}
	if sp.SourceLLM, err = f.str("source_llm", true); err != nil {
		return req, err
	}
	if sp.Provider, err = f.str("provider", true); err != nil {
		return req, err
	}
	if !s.providers[sp.Provider] {
		return req, invalid("unknown_provider", "unknown provider %q (available: %s)", sp.Provider, s.providerNames())
	}
	if sp.DatasetURI, err = f.str("dataset_uri", false); err != nil {
		return req, err
	}
	if f.has("training_pairs") {
		if err := json.Unmarshal(f["training_pairs"], &req.Pairs); err != nil {
			return req, malformed("invalid_field", "field \"training_pairs\" must be an array of {\"prompt\",\"response\"} objects")
		}
	}
	switch {
	case sp.DatasetURI == "" && !f.has("training_pairs"):
		return req, invalid("missing_dataset", "give the training data as \"dataset_uri\" or \"training_pairs\"")
	case sp.DatasetURI != "" && f.has("training_pairs"):
		return req, invalid("ambiguous_dataset", "give either \"dataset_uri\" or \"training_pairs\", not both")
	}
	if sp.GPUType, err = f.str("gpu_type", false); err != nil {
		return req, err
	}
	if sp.Spot, err = f.boolean("spot"); err != nil {
		return req, err
	}
	if sp.OnDemandFallback, err = f.boolean("on_demand_fallback"); err != nil {
		return req, err
	}
	if sp.OnDemandFallback && !sp.Spot {
		return req, invalid("invalid_machine_options", "on_demand_fallback only applies with \"spot\": true")
	}
	if sp.MaxDurationSeconds, err = f.integer("max_duration_seconds", false); err != nil {
		return req, err
	}
	if sp.MaxDurationSeconds < 0 || sp.MaxDurationSeconds > maxDurationSeconds {
		return req, invalid("invalid_max_duration_seconds", "max_duration_seconds must be from 0 (no limit) to %d (30 days)", maxDurationSeconds)
	}
	if f.has("hyperparameters") {
		var hp map[string]any
		if err := json.Unmarshal(f["hyperparameters"], &hp); err != nil || hp == nil {
			return req, malformed("invalid_field", "field \"hyperparameters\" must be an object")
		}
		if msg := trainer.CheckHyperparameters(hp); msg != "" {
			return req, invalid("invalid_hyperparameters", "%s", msg)
		}
		var typed job.Hyperparameters
		if err := json.Unmarshal(f["hyperparameters"], &typed); err != nil {
			return req, malformed("invalid_field", "field \"hyperparameters\" has a value of the wrong type")
		}
		sp.Hyperparameters = &typed
	}
	return req, nil
}

func (s *Server) start(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeJSON(w, http.StatusRequestEntityTooLarge, ErrorBody{ErrorDetail{Code: "body_too_large",
				Message: fmt.Sprintf("the request body is larger than %d bytes; give large datasets as dataset_uri", s.maxBody)}})
			return
		}
		s.writeError(w, r, malformed("invalid_body", "the request body could not be read"))
		return
	}
	req, err := s.parseStart(body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	j, created, err := s.svc.Submit(r.Context(), req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusAccepted
	}
	w.Header().Set("Location", "/api/v1/training/"+j.TrainID+"/status")
	writeJSON(w, status, j)
}
