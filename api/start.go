package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
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

// pairsField is what streaming "training_pairs" left: whether the field was there, how
// many pairs went to the spool file, and the first problem with it (reported where the
// field is checked, so the first problem of the body is still the one named).
type pairsField struct {
	present bool
	count   int
	err     error
}

// startReader reads a start body token by token: every field but training_pairs is kept
// raw (they are small), and training_pairs is decoded one element at a time and written,
// one per line, to a spool file, so a large body is never held in memory.
type startReader struct {
	dec      *json.Decoder
	maxPairs int
	spoolDir string
	spool    *os.File
	w        *bufio.Writer
	buf      bytes.Buffer
}

// errTooLarge carries the body's size error out of the decoder.
type errTooLarge struct{ err error }

func (e errTooLarge) Error() string { return e.err.Error() }

func (sr *startReader) readErr(err error) error {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return errTooLarge{err}
	}
	if errors.Is(err, errSpool) {
		return err
	}
	return malformed("invalid_json", "the request body must be a JSON object")
}

var errSpool = errors.New("spool training pairs")

// read parses the body into its raw fields and the spooled pairs.
func (sr *startReader) read() (fields, pairsField, error) {
	var pf pairsField
	tok, err := sr.dec.Token()
	if err != nil {
		return nil, pf, sr.readErr(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, pf, malformed("invalid_json", "the request body must be a JSON object")
	}
	f := fields{}
	for sr.dec.More() {
		tok, err := sr.dec.Token()
		if err != nil {
			return nil, pf, sr.readErr(err)
		}
		key, _ := tok.(string)
		switch key {
		case "training_pairs":
			if pf, err = sr.readPairs(); err != nil {
				return nil, pf, err
			}
		default:
			var raw json.RawMessage
			if err := sr.dec.Decode(&raw); err != nil {
				return nil, pf, sr.readErr(err)
			}
			f[key] = raw
		}
	}
	if _, err := sr.dec.Token(); err != nil {
		return nil, pf, sr.readErr(err)
	}
	if sr.dec.More() {
		return nil, pf, malformed("invalid_json", "the request body must hold exactly one JSON object")
	}
	// A body that ends without its closing brace, or with something after it.
	if _, err := sr.dec.Token(); err != io.EOF {
		if err == nil {
			return nil, pf, malformed("invalid_json", "the request body must hold exactly one JSON object")
		}
		return nil, pf, sr.readErr(err)
	}
	if sr.w != nil {
		if err := sr.w.Flush(); err != nil {
			return nil, pf, fmt.Errorf("%w: %w", errSpool, err)
		}
	}
	return f, pf, nil
}

// readPairs streams the value of training_pairs into the spool file. A value that is not
// an array, or more pairs than maxPairs, is recorded in the result and the rest of the
// value skipped; only a body that is not well-formed JSON (or too large) ends the read.
func (sr *startReader) readPairs() (pairsField, error) {
	pf := pairsField{present: true}
	if sr.spool != nil {
		// The field again: the last one counts, as for every other field.
		if err := sr.w.Flush(); err != nil {
			return pf, fmt.Errorf("%w: %w", errSpool, err)
		}
		if err := sr.spool.Truncate(0); err != nil {
			return pf, fmt.Errorf("%w: %w", errSpool, err)
		}
		if _, err := sr.spool.Seek(0, io.SeekStart); err != nil {
			return pf, fmt.Errorf("%w: %w", errSpool, err)
		}
		sr.w.Reset(sr.spool)
	}
	notArray := malformed("invalid_field", "field \"training_pairs\" must be an array of {\"prompt\",\"response\"} objects")
	tok, err := sr.dec.Token()
	if err != nil {
		return pf, sr.readErr(err)
	}
	switch tok {
	case nil:
		return pairsField{}, nil // null: as if absent
	case json.Delim('['):
	case json.Delim('{'):
		pf.err = notArray
		return pf, sr.skip(1)
	default:
		pf.err = notArray
		return pf, nil
	}
	if sr.spool == nil {
		f, err := os.CreateTemp(sr.spoolDir, ".pairs-*")
		if err != nil {
			return pf, fmt.Errorf("%w: %w", errSpool, err)
		}
		sr.spool = f
		sr.w = bufio.NewWriterSize(f, 256<<10)
	}
	var raw json.RawMessage
	for sr.dec.More() {
		raw = raw[:0]
		if err := sr.dec.Decode(&raw); err != nil {
			return pf, sr.readErr(err)
		}
		if pf.err != nil {
			continue // skipping the rest after a problem
		}
		if pf.count >= sr.maxPairs {
			pf.err = invalid("too_many_pairs", "the request holds more than %d training_pairs, the most this service takes inline (serve --max-pairs); give a larger dataset as dataset_uri", sr.maxPairs)
			continue
		}
		line := bytes.TrimSpace(raw)
		if bytes.ContainsAny(line, "\r\n") {
			// One pair per line in the spool: a pair written over several lines is compacted.
			sr.buf.Reset()
			json.Compact(&sr.buf, line)
			line = sr.buf.Bytes()
		}
		sr.w.Write(line)
		if err := sr.w.WriteByte('\n'); err != nil {
			return pf, fmt.Errorf("%w: %w", errSpool, err)
		}
		pf.count++
	}
	if _, err := sr.dec.Token(); err != nil { // ]
		return pf, sr.readErr(err)
	}
	return pf, nil
}

// skip reads tokens until depth open objects or arrays are closed.
func (sr *startReader) skip(depth int) error {
	for depth > 0 {
		tok, err := sr.dec.Token()
		if err != nil {
			return sr.readErr(err)
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
	}
	return nil
}

func (sr *startReader) close() {
	if sr.spool != nil {
		sr.spool.Close()
		os.Remove(sr.spool.Name())
	}
}

// parseStart checks the fields of a start body in order, naming the first problem.
func (s *Server) parseStart(f fields, pf pairsField, spool string) (lifecycle.StartRequest, error) {
	var req lifecycle.StartRequest
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
	if pf.err != nil {
		return req, pf.err
	}
	if pf.present {
		req.PairsPath = spool
	}
	switch {
	case sp.DatasetURI == "" && !pf.present:
		return req, invalid("missing_dataset", "give the training data as \"dataset_uri\" or \"training_pairs\"")
	case sp.DatasetURI != "" && pf.present:
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
	// An explicit 0 asks for no limit; an absent one takes the service's default.
	req.NoMaxDuration = f.has("max_duration_seconds") && sp.MaxDurationSeconds == 0
	if sp.MaxDurationSeconds < 0 || sp.MaxDurationSeconds > maxDurationSeconds {
		return req, invalid("invalid_max_duration_seconds", "max_duration_seconds must be from 0 (no limit) to %d (30 days)", maxDurationSeconds)
	}
	if sp.KeepCheckpoint, err = f.boolean("keep_checkpoint"); err != nil {
		return req, err
	}
	if f.has("max_cost_usd") && json.Unmarshal(f["max_cost_usd"], &sp.MaxCostUSD) != nil {
		return req, malformed("invalid_field", "field \"max_cost_usd\" must be a number")
	}
	if sp.MaxCostUSD < 0 || math.IsNaN(sp.MaxCostUSD) || math.IsInf(sp.MaxCostUSD, 0) {
		return req, invalid("invalid_max_cost_usd", "max_cost_usd must be 0 (no limit) or a positive number of US dollars")
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
	sr := &startReader{dec: json.NewDecoder(http.MaxBytesReader(w, r.Body, s.maxBody)), maxPairs: s.maxPairs, spoolDir: s.spoolDir}
	defer sr.close()
	f, pf, err := sr.read()
	var tooBig errTooLarge
	switch {
	case errors.As(err, &tooBig):
		writeJSON(w, http.StatusRequestEntityTooLarge, ErrorBody{ErrorDetail{Code: "body_too_large",
			Message: fmt.Sprintf("the request body is larger than %d bytes; give large datasets as dataset_uri", s.maxBody)}})
		return
	case errors.Is(err, errSpool):
		s.writeError(w, r, err)
		return
	case err != nil:
		s.writeError(w, r, err)
		return
	}
	spool := ""
	if sr.spool != nil {
		spool = sr.spool.Name()
	}
	req, err := s.parseStart(f, pf, spool)
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
