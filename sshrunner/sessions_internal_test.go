package sshrunner

import (
	"testing"
	"time"
)

func TestSessionsFollowTheRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		rtt  time.Duration
		want int
	}{
		{0, maxDownloadSessions}, // not measured: as many as a WAN needs
		{80 * time.Microsecond, 1},
		{time.Millisecond, 1},
		{2 * time.Millisecond, 2},
		{4 * time.Millisecond, 3},
		{40 * time.Millisecond, maxDownloadSessions},
	} {
		if got := sessionsFor(tc.rtt); got != tc.want {
			t.Errorf("sessionsFor(%v) = %d, want %d", tc.rtt, got, tc.want)
		}
	}
}

func TestConnectionsFollowTheRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		rtt  time.Duration
		want int
	}{
		{0, 1}, // not measured: extra connections cost handshakes
		{80 * time.Microsecond, 1},
		{2 * time.Millisecond, 1},
		{4 * time.Millisecond, 2},
		{40 * time.Millisecond, maxDownloadConnections},
	} {
		if got := connectionsFor(tc.rtt); got != tc.want {
			t.Errorf("connectionsFor(%v) = %d, want %d", tc.rtt, got, tc.want)
		}
	}
}
