package fakecloud

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"
)

// Provider names the API a Server imitates.
type Provider string

// The providers a Server can imitate.
const (
	RunPod Provider = "runpod"
	Lambda Provider = "lambda"
)

// Defaults applied to a Config's zero fields.
const (
	DefaultAPIKey         = "fake-key"
	DefaultBootDelay      = 3 * time.Second
	DefaultSlowDelete     = 10 * time.Second
	DefaultLaunchInterval = 12 * time.Second
	DefaultSSHPort        = 22
)

// Config describes one fake cloud.
type Config struct {
	// Provider is the API served: RunPod or Lambda.
	Provider Provider
	// Dir holds the machines, one directory each under Dir/machines. It is created when
	// missing; sshd's StrictModes must accept it (no group- or world-writable parent).
	Dir string
	// APIKey is the key requests must carry; empty means DefaultAPIKey.
	APIKey string
	// BootDelay is how long a machine takes from create to running; zero means
	// DefaultBootDelay.
	BootDelay time.Duration
	// SlowDelete is how long a deleted machine stays up under Faults.SlowDelete; zero means
	// DefaultSlowDelete.
	SlowDelete time.Duration
	// LaunchInterval (Lambda) is the least time between two accepted launches; zero means
	// DefaultLaunchInterval.
	LaunchInterval time.Duration
	// SSHPort (Lambda) is the port every instance's sshd listens on, each on its own
	// loopback address; zero means DefaultSSHPort.
	SSHPort int
	// SSHDPath is the OpenSSH server to run; empty means /usr/sbin/sshd.
	SSHDPath string
	// Faults are the failures to imitate.
	Faults Faults
	// Logger receives the fake's log; nil discards it.
	Logger *slog.Logger
}

// Faults are the failures a Server imitates. The zero value imitates none.
type Faults struct {
	// CreateFailsButCreates: every create makes the machine but answers HTTP 500.
	CreateFailsButCreates bool
	// NoCapacity: creates fail for lack of GPUs and the catalogues show no stock.
	NoCapacity bool
	// RateLimit: every second authenticated API request answers 429, Retry-After: 1.
	RateLimit bool
	// SlowDelete: a deleted machine stays up and visible for Config.SlowDelete.
	SlowDelete bool
	// PreemptAfter, when positive, ends spot pods (RunPod) or every instance (Lambda)
	// that long after they started running.
	PreemptAfter time.Duration
	// PreemptOnce limits PreemptAfter to the first machine made: its replacement runs on.
	PreemptOnce bool
	// Auth: every API request answers 401.
	Auth bool
	// NoUserData (Lambda): a launch carrying user_data is refused with 400.
	NoUserData bool
}

// FaultNames lists the values Faults.Set accepts.
var FaultNames = []string{
	"create-500-but-created", "no-capacity", "rate-limit", "slow-delete",
	"preempt-after=<duration>", "preempt-once", "auth", "no-user-data",
}

// Set turns on the fault named by spec, one of FaultNames; it suits flag.Func.
func (f *Faults) Set(spec string) error {
	name, value, hasValue := strings.Cut(spec, "=")
	if hasValue && name != "preempt-after" {
		return fmt.Errorf("parse fault %q: only preempt-after takes a value", spec)
	}
	switch name {
	case "create-500-but-created":
		f.CreateFailsButCreates = true
	case "no-capacity":
		f.NoCapacity = true
	case "rate-limit":
		f.RateLimit = true
	case "slow-delete":
		f.SlowDelete = true
	case "auth":
		f.Auth = true
	case "no-user-data":
		f.NoUserData = true
	case "preempt-once":
		f.PreemptOnce = true
	case "preempt-after":
		d, err := time.ParseDuration(value)
		if err != nil || d <= 0 {
			return fmt.Errorf("parse fault %q: want preempt-after=<positive duration>", spec)
		}
		f.PreemptAfter = d
	default:
		return fmt.Errorf("parse fault %q: unknown fault (known: %s)", spec, strings.Join(FaultNames, ", "))
	}
	return nil
}

// Validate reports the first bad field of c, naming it.
func (c Config) Validate() error {
	switch {
	case c.Provider != RunPod && c.Provider != Lambda:
		return fmt.Errorf("provider: %q is neither %q nor %q", c.Provider, RunPod, Lambda)
	case c.Dir == "":
		return errors.New("dir: required")
	case c.BootDelay < 0:
		return errors.New("boot delay: negative")
	case c.SlowDelete < 0:
		return errors.New("slow delete: negative")
	case c.LaunchInterval < 0:
		return errors.New("launch interval: negative")
	case c.SSHPort < 0 || c.SSHPort > 65535:
		return fmt.Errorf("ssh port: %d out of range", c.SSHPort)
	case c.Faults.NoUserData && c.Provider != Lambda:
		return errors.New("faults: no-user-data applies to lambda only")
	case c.SSHDPath != "" && !filepath.IsAbs(c.SSHDPath):
		return errors.New("sshd path: must be absolute")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.APIKey == "" {
		c.APIKey = DefaultAPIKey
	}
	if c.BootDelay == 0 {
		c.BootDelay = DefaultBootDelay
	}
	if c.SlowDelete == 0 {
		c.SlowDelete = DefaultSlowDelete
	}
	if c.LaunchInterval == 0 {
		c.LaunchInterval = DefaultLaunchInterval
	}
	if c.SSHPort == 0 {
		c.SSHPort = DefaultSSHPort
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
