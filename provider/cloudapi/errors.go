package cloudapi

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Reason classifies a cloud API failure.
type Reason string

// Reasons. The first three reach users as job error codes.
const (
	ReasonNoCapacity  Reason = "no_capacity"          // no machine of that kind is free now
	ReasonAuth        Reason = "provider_auth"        // the API key is missing, wrong or revoked
	ReasonQuota       Reason = "provider_quota"       // balance, quota or account limits
	ReasonNotFound    Reason = "not_found"            // the object does not exist (any more)
	ReasonInvalid     Reason = "invalid_request"      // the request breaks the API's rules
	ReasonConflict    Reason = "conflict"             // not allowed in the object's current state
	ReasonRateLimited Reason = "rate_limited"         // 429 after every retry
	ReasonUnavailable Reason = "provider_unavailable" // 5xx or transport errors after every retry
	ReasonUnknown     Reason = "provider_error"       // anything else
)

// Error is a failed call to a cloud API. Message is the provider's own explanation; it
// never holds the API key.
type Error struct {
	Provider string // "runpod", "lambda"
	Op       string // what was attempted, "create pod"
	Status   int    // HTTP status; 0 when no response arrived
	Reason   Reason
	Code     string // the provider's machine-readable code, when it has one
	Message  string
	// Fields names the request fields the provider found fault with, when it says.
	Fields     []string
	RetryAfter time.Duration // from a Retry-After header
	// Ambiguous reports that the request may have taken effect although it failed (a
	// timeout or a 5xx answer to a create): look before you retry.
	Ambiguous bool
	Err       error // the transport error, if any
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Provider)
	if e.Op != "" {
		b.WriteString(": " + e.Op)
	}
	if e.Status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.Status)
	}
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	switch {
	case e.Message != "":
		b.WriteString(": " + e.Message)
	case e.Err != nil:
		b.WriteString(": " + e.Err.Error())
	}
	b.WriteString(" " + Marker(e.Reason))
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the Reason of the first *Error in err's chain, or of a marker in its
// text, or "" when it has neither.
func ReasonOf(err error) Reason {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	r, _ := ParseMarker(err.Error())
	return r
}

// IsNotFound reports whether err says the object does not exist.
func IsNotFound(err error) bool { return ReasonOf(err) == ReasonNotFound }

const markerPrefix = "[understudy:"

var markerPattern = regexp.MustCompile(`\s*\[understudy:([a-z_]+)\]`)

// Marker is the text that carries r through the Pulumi engine's diagnostics.
func Marker(r Reason) string {
	if r == "" {
		r = ReasonUnknown
	}
	return markerPrefix + string(r) + "]"
}

// ParseMarker returns the reason of the last marker in text and text without markers.
func ParseMarker(text string) (Reason, string) {
	all := markerPattern.FindAllStringSubmatch(text, -1)
	if len(all) == 0 {
		return "", text
	}
	return Reason(all[len(all)-1][1]), strings.TrimSpace(markerPattern.ReplaceAllString(text, ""))
}

// Errorf returns an *Error of provider with reason and a formatted message, for failures a
// client finds itself (no capacity in a catalogue, a machine that never became ready).
func Errorf(provider string, reason Reason, op, format string, args ...any) error {
	return &Error{Provider: provider, Op: op, Reason: reason, Message: fmt.Sprintf(format, args...)}
}
