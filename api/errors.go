package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"

	"github.com/understudy-ai/training-service/job"
)

// statusOf is the one table from error codes to HTTP statuses.
var statusOf = map[job.Code]int{
	job.CodeMalformed:          http.StatusBadRequest,
	job.CodeInvalidArgument:    http.StatusUnprocessableEntity,
	job.CodeUnauthenticated:    http.StatusUnauthorized,
	job.CodeNotFound:           http.StatusNotFound,
	job.CodeAlreadyExists:      http.StatusConflict,
	job.CodeFailedPrecondition: http.StatusConflict,
	job.CodeResourceExhausted:  http.StatusTooManyRequests,
	job.CodeUnavailable:        http.StatusServiceUnavailable,
	job.CodeCanceled:           http.StatusServiceUnavailable,
	job.CodeInternal:           http.StatusInternalServerError,
	job.CodeUnknown:            http.StatusInternalServerError,
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail names the problem: Code is the reason when the error has one (such as
// "invalid_dataset"), else the error's code.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	encodeJSON(w, v)
}

func encodeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// StatusDocument renders a job exactly as GET /api/v1/training/{train_id}/status answers it:
// the one document the backend reads, from that call and from the webhooks.
func StatusDocument(j *job.Job) ([]byte, error) {
	var b bytes.Buffer
	if err := encodeJSON(&b, j); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// writeError answers with err's status and client-safe message, and logs 5xx errors in full.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := job.CodeOf(err)
	status, ok := statusOf[code]
	if !ok {
		status = http.StatusInternalServerError
	}
	var e *job.Error
	detail := ErrorDetail{Code: string(code), Message: "internal error"}
	if errors.As(err, &e) {
		if reason := job.ReasonOf(err); reason != "" {
			detail.Code = reason
		}
		detail.Message = job.MessageOf(err)
	}
	if status >= 500 {
		s.log.LogAttrs(r.Context(), slog.LevelError, "request failed", slog.String("path", r.URL.Path), slog.String("err", err.Error()))
		if code == job.CodeUnknown || code == job.CodeInternal {
			detail = ErrorDetail{Code: "internal", Message: "internal error"}
		}
	}
	if status == http.StatusTooManyRequests && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", "30")
	}
	writeJSON(w, status, ErrorBody{Error: detail})
}

func fail(code job.Code, reason, msg string) error {
	return &job.Error{Code: code, Reason: reason, Message: msg}
}
