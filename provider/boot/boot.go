// Package boot renders what a cloud machine runs when it boots, before the service first
// connects: the service's SSH host key installed before sshd starts (so the first
// connection is already pinned) and the dead-man's switch (watchdog.sh), which stops the
// job's work and the machine when the service stops renewing the job's lease or the job's
// deadline passes.
//
// A RunPod pod gets them as environment values and a start command (RunPodStart); a Lambda
// instance as cloud-init user data (LambdaUserData). The environment names and the
// lease.env path below are the contract with the fake clouds of the tests, which set their
// machines up from the same request fields.
//
// The package imports nothing else of this module.
package boot

import (
	_ "embed"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"
)

// Environment names a machine's boot reads.
const (
	EnvHostKey      = "UNDERSTUDY_HOST_KEY"      // base64 of the OpenSSH PEM ed25519 host key
	EnvLeaseFile    = "UNDERSTUDY_LEASE_FILE"    // absolute path the service touches to renew the lease
	EnvLeaseSeconds = "UNDERSTUDY_LEASE_SECONDS" // how long a lease lasts; 0: no lease
	EnvDeadline     = "UNDERSTUDY_DEADLINE"      // unix seconds; 0: none
	EnvWatchdog     = "UNDERSTUDY_WATCHDOG"      // base64 of watchdog.sh
	EnvStart        = "UNDERSTUDY_START"         // base64 of the pod's start script
	EnvPublicKey    = "PUBLIC_KEY"               // RunPod images' authorized keys
)

// LeaseEnvPath is where a virtual machine's cloud-config writes the lease settings.
const LeaseEnvPath = "/etc/understudy/lease.env"

// WatchdogPath is where the watchdog is installed on the machine.
const WatchdogPath = "/usr/local/sbin/understudy-watchdog"

//go:embed watchdog.sh
var watchdog string

//go:embed runpod-start.sh
var runpodStart string

// Watchdog returns the watchdog script.
func Watchdog() string { return watchdog }

// Lease is the machine's dead-man's switch.
type Lease struct {
	File     string // absolute path on the machine
	Seconds  int    // 0: no lease
	Deadline int64  // unix seconds; 0: none
}

func (l Lease) env() map[string]string {
	return map[string]string{
		EnvLeaseFile:    l.File,
		EnvLeaseSeconds: strconv.Itoa(l.Seconds),
		EnvDeadline:     strconv.FormatInt(l.Deadline, 10),
	}
}

// Machine is what a machine needs at boot.
type Machine struct {
	// HostPrivateKey is the OpenSSH PEM ed25519 host key; empty leaves the image's own.
	HostPrivateKey string
	// AuthorizedKeys are the public keys that may log in (the job's, an operator's).
	AuthorizedKeys []string
	Lease          Lease
}

// RunPodStart returns the environment and the start command (the pod's "args") of a pod.
// The start command is short and fixed; the scripts travel base64-encoded in the
// environment so that no quoting can break them.
func RunPodStart(m Machine) (env map[string]string, args string) {
	env = m.Lease.env()
	env[EnvPublicKey] = strings.Join(trimmed(m.AuthorizedKeys), "\n")
	if m.HostPrivateKey != "" {
		env[EnvHostKey] = base64.StdEncoding.EncodeToString([]byte(strings.TrimSpace(m.HostPrivateKey) + "\n"))
	}
	env[EnvWatchdog] = base64.StdEncoding.EncodeToString([]byte(watchdog))
	env[EnvStart] = base64.StdEncoding.EncodeToString([]byte(runpodStart))
	args = `bash -c 'printf %s "$` + EnvStart + `" | base64 -d >/tmp/understudy-start.sh && exec bash /tmp/understudy-start.sh'`
	return env, args
}

// RunPodStartScript is the script the start command runs, for tests.
func RunPodStartScript() string { return runpodStart }

type writeFile struct {
	Path        string `yaml:"path"`
	Permissions string `yaml:"permissions"`
	Owner       string `yaml:"owner,omitempty"`
	Encoding    string `yaml:"encoding,omitempty"`
	Content     string `yaml:"content"`
}

type cloudConfig struct {
	SSHDeleteKeys     bool              `yaml:"ssh_deletekeys"`
	SSHKeys           map[string]string `yaml:"ssh_keys,omitempty"`
	SSHAuthorizedKeys []string          `yaml:"ssh_authorized_keys,omitempty"`
	WriteFiles        []writeFile       `yaml:"write_files"`
	RunCmd            [][]string        `yaml:"runcmd"`
}

// LambdaUserData returns cloud-init user data for a virtual machine: cloud-init installs
// the host key before sshd first starts (its ssh module), authorises the extra keys for
// the default user, and starts the watchdog as a transient systemd unit.
func LambdaUserData(m Machine) (string, error) {
	cc := cloudConfig{SSHDeleteKeys: true, SSHAuthorizedKeys: trimmed(m.AuthorizedKeys)}
	if m.HostPrivateKey != "" {
		signer, err := ssh.ParsePrivateKey([]byte(m.HostPrivateKey))
		if err != nil {
			return "", fmt.Errorf("parse host key: %w", err)
		}
		cc.SSHKeys = map[string]string{
			"ed25519_private": strings.TrimSpace(m.HostPrivateKey) + "\n",
			"ed25519_public":  strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))),
		}
	}
	var lease strings.Builder
	env := m.Lease.env()
	for _, k := range []string{EnvLeaseFile, EnvLeaseSeconds, EnvDeadline} {
		fmt.Fprintf(&lease, "%s=%s\n", k, env[k])
	}
	cc.WriteFiles = []writeFile{
		{Path: LeaseEnvPath, Permissions: "0600", Owner: "root:root", Content: lease.String()},
		{Path: WatchdogPath, Permissions: "0700", Owner: "root:root", Encoding: "b64",
			Content: base64.StdEncoding.EncodeToString([]byte(watchdog))},
	}
	cc.RunCmd = [][]string{{"systemd-run", "--unit=understudy-watchdog", "--property=EnvironmentFile=" + LeaseEnvPath,
		WatchdogPath, "poweroff"}}
	out, err := yaml.Marshal(cc)
	if err != nil {
		return "", fmt.Errorf("encode cloud-config: %w", err)
	}
	return "#cloud-config\n" + string(out), nil
}

func trimmed(lines []string) []string {
	var out []string
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
