package storage

import "time"

// SetAccessTimeout shortens the check that a bucket answers for the rest of a test.
func SetAccessTimeout(d time.Duration) (restore func()) {
	old := accessTimeout
	accessTimeout = d
	return func() { accessTimeout = old }
}
