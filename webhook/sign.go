package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Headers of a delivery.
const (
	// HeaderSignature is "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">".
	HeaderSignature = "Understudy-Signature"
	// HeaderDelivery is the delivery's unique id; its retries keep it, so a receiver drops
	// an id it has already processed.
	HeaderDelivery = "Understudy-Delivery"
	// HeaderEvent is the kind of event (EventStatusChanged).
	HeaderEvent = "Understudy-Event"
	// HeaderStatus is the job's status in the body; HeaderTrainID its train_id.
	HeaderStatus  = "Understudy-Job-Status"
	HeaderTrainID = "Understudy-Train-Id"
	// HeaderAttempt counts the attempts of one delivery, from 1.
	HeaderAttempt = "Understudy-Attempt"
)

// EventStatusChanged is the event of a delivery made for a job's status change.
const EventStatusChanged = "job.status_changed"

// Errors of Verify.
var (
	ErrNoSignature       = errors.New("webhook: no signature header")
	ErrMalformedHeader   = errors.New("webhook: malformed signature header")
	ErrTimestampExpired  = errors.New("webhook: signature timestamp outside the tolerance")
	ErrSignatureMismatch = errors.New("webhook: signature does not match")
)

// Sign returns the HMAC-SHA256, in hex, of "<t>.<body>" under secret.
func Sign(secret string, t time.Time, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(strconv.FormatInt(t.Unix(), 10)))
	mac.Write([]byte("."))
	mac.Write(body)
	return hex.EncodeToString(mac.Sum(nil))
}

// SignatureHeader returns the value of HeaderSignature for body signed at t.
func SignatureHeader(secret string, t time.Time, body []byte) string {
	return "t=" + strconv.FormatInt(t.Unix(), 10) + ",v1=" + Sign(secret, t, body)
}

// Verify checks a delivery as its receiver would: header is the HeaderSignature value, body
// the raw request body (before any JSON decoding). The signature must match and, when
// tolerance is positive, its timestamp lie within tolerance of now, so that a captured
// delivery cannot be replayed later. A header may carry several v1 values (while a secret is
// rotated); one matching is enough.
func Verify(secret, header string, body []byte, tolerance time.Duration) error {
	return verifyAt(secret, header, body, tolerance, time.Now())
}

func verifyAt(secret, header string, body []byte, tolerance time.Duration, now time.Time) error {
	header = strings.TrimSpace(header)
	if header == "" {
		return ErrNoSignature
	}
	var ts int64
	haveTS := false
	var sigs []string
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return ErrMalformedHeader
		}
		switch k {
		case "t":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return ErrMalformedHeader
			}
			ts, haveTS = n, true
		case "v1":
			sigs = append(sigs, v)
		}
	}
	if !haveTS || len(sigs) == 0 {
		return ErrMalformedHeader
	}
	t := time.Unix(ts, 0)
	if tolerance > 0 && (now.Sub(t) > tolerance || t.Sub(now) > tolerance) {
		return ErrTimestampExpired
	}
	want, _ := hex.DecodeString(Sign(secret, t, body))
	for _, s := range sigs {
		got, err := hex.DecodeString(s)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return ErrSignatureMismatch
}
