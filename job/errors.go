package job

import (
	"errors"
	"fmt"
)

// Code classifies an error so that retry logic and the API can branch on it without
// parsing messages. The API maps each code to one HTTP status in one table.
type Code string

const (
	CodeUnknown            Code = "unknown"
	CodeMalformed          Code = "malformed" // a request that is not even well-formed: bad JSON, wrong types
	CodeInvalidArgument    Code = "invalid_argument"
	CodeNotFound           Code = "not_found"
	CodeAlreadyExists      Code = "already_exists"
	CodeFailedPrecondition Code = "failed_precondition"
	CodeResourceExhausted  Code = "resource_exhausted" // no GPU capacity, quota, budget
	CodeUnavailable        Code = "unavailable"        // transient: retry
	CodeUnauthenticated    Code = "unauthenticated"
	CodeCanceled           Code = "canceled"
	CodeInternal           Code = "internal"
)

// Error is an error with a Code and an optional machine-readable Reason (a finer code that
// reaches clients, such as "invalid_dataset" or "teardown_failed"). Message is safe to show
// to a client; the wrapped error may hold internal detail and never leaves the service.
type Error struct {
	Code    Code
	Reason  string
	Message string
	Err     error
}

func (e *Error) Error() string {
	switch {
	case e.Message != "" && e.Err != nil:
		return e.Message + ": " + e.Err.Error()
	case e.Message != "":
		return e.Message
	case e.Err != nil:
		return e.Err.Error()
	}
	return string(e.Code)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with code and a client-safe message.
func Errorf(code Code, format string, args ...any) error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error with code and message that wraps err; err's text stays internal.
func Wrap(code Code, err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Err: err}
}

// WithReason sets the client-visible reason of err when it is an *Error, or wraps it.
func WithReason(err error, code Code, reason string) error {
	var e *Error
	if errors.As(err, &e) {
		c := *e
		c.Reason = reason
		if c.Code == CodeUnknown || c.Code == "" {
			c.Code = code
		}
		return &c
	}
	return &Error{Code: code, Reason: reason, Message: reason, Err: err}
}

// CodeOf returns the code of the first *Error in err's chain, CodeCanceled for context
// cancellation, and CodeUnknown otherwise.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) && e.Code != "" {
		return e.Code
	}
	return CodeUnknown
}

// ReasonOf returns the reason of the first *Error in err's chain that has one.
func ReasonOf(err error) string {
	for err != nil {
		var e *Error
		if !errors.As(err, &e) {
			return ""
		}
		if e.Reason != "" {
			return e.Reason
		}
		err = e.Err
	}
	return ""
}

// MessageOf returns the client-safe message of err: the message of the first *Error in its
// chain, or a generic text for errors that carry none.
func MessageOf(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Message != "" {
		return e.Message
	}
	return "internal error"
}
