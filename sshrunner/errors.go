package sshrunner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/pkg/sftp"

	"github.com/understudy-ai/training-service/job"
)

// ExitError reports a command that ran and exited with a non-zero status.
type ExitError struct {
	Code   int
	Stderr []byte // the tail of the command's stderr, at most 64 KiB
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("exit status %d", e.Code)
	if s := bytes.TrimSpace(e.Stderr); len(s) > 0 {
		if len(s) > 512 {
			s = s[len(s)-512:]
		}
		msg += ": " + string(s)
	}
	return msg
}

// ErrChecksumMismatch is wrapped by errors of Download and Verify when content does not
// match the hash it should have.
var ErrChecksumMismatch = errors.New("checksum mismatch")

// ErrProcessLost is wrapped by Follow's error when the run's process is gone and left no
// exit status: the machine rebooted or the process was killed from outside.
var ErrProcessLost = errors.New("process lost")

// opError classifies an error of an operation on an established connection: the context
// ended (Canceled), the server refused a file operation (NotFound, FailedPrecondition), or
// anything else, which is the connection failing (Unavailable: redial and retry).
func opError(ctx context.Context, err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	var je *job.Error
	if errors.As(err, &je) {
		return err
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		if !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w: %w", ctxErr, err)
		}
		return job.Wrap(job.CodeCanceled, err, format, args...)
	}
	var st *sftp.StatusError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return job.Wrap(job.CodeNotFound, err, format, args...)
	case errors.Is(err, fs.ErrPermission):
		return job.Wrap(job.CodeFailedPrecondition, err, format, args...)
	case errors.As(err, &st):
		return job.Wrap(job.CodeFailedPrecondition, err, format, args...)
	}
	return job.Wrap(job.CodeUnavailable, err, format, args...)
}
