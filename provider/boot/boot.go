// Package boot renders what a cloud machine runs when it boots, before the service first
// connects: the service's SSH host key installed before sshd starts (so the first
// connection is already pinned) and the dead-man's switch (watchdog.sh), which stops the
// job's work and the machine when the service stops renewing the job's lease or the job's
// deadline passes.
//
// A RunPod pod gets them as environment values and a start command (RunPodStart); a
// virtual machine whose image runs cloud-init (Lambda, AWS, Azure) as cloud-init user data
// (CloudInit, LambdaUserData); a GCP instance as a startup script (StartupScript). The environment names and the
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

// LambdaUserData returns cloud-init user data for a Lambda Cloud instance: CloudInit.
func LambdaUserData(m Machine) (string, error) { return CloudInit(m) }

// CloudInit returns cloud-init user data for a virtual machine whose image runs cloud-init
// (Lambda, AWS EC2 user data, Azure custom data): cloud-init installs the host key before
// sshd first starts (its ssh module, which also deletes the image's own host keys),
// authorises the extra keys for the default user, writes the lease settings to
// LeaseEnvPath and starts the watchdog as a transient systemd unit that powers the machine
// off. The result holds the host private key: keep it secret.
func CloudInit(m Machine) (string, error) {
	cc := cloudConfig{SSHDeleteKeys: true, SSHAuthorizedKeys: trimmed(m.AuthorizedKeys)}
	if m.HostPrivateKey != "" {
		pub, err := publicKey(m.HostPrivateKey)
		if err != nil {
			return "", err
		}
		cc.SSHKeys = map[string]string{
			"ed25519_private": strings.TrimSpace(m.HostPrivateKey) + "\n",
			"ed25519_public":  pub,
		}
	}
	cc.WriteFiles = []writeFile{
		{Path: LeaseEnvPath, Permissions: "0600", Owner: "root:root", Content: m.Lease.envFile()},
		{Path: WatchdogPath, Permissions: "0700", Owner: "root:root", Encoding: "b64",
			Content: base64.StdEncoding.EncodeToString([]byte(watchdog))},
	}
	cc.RunCmd = [][]string{{"systemd-run", "--unit=" + watchdogUnit, "--property=EnvironmentFile=" + LeaseEnvPath,
		WatchdogPath, "poweroff"}}
	out, err := yaml.Marshal(cc)
	if err != nil {
		return "", fmt.Errorf("encode cloud-config: %w", err)
	}
	return "#cloud-config\n" + string(out), nil
}

// watchdogUnit is the transient systemd unit the watchdog runs as on a virtual machine.
const watchdogUnit = "understudy-watchdog"

// HostKeyDropIn is the sshd configuration StartupScript writes so that sshd serves the
// service's host key (and only it, unless the image's sshd_config names others).
const HostKeyDropIn = "/etc/ssh/sshd_config.d/00-understudy-hostkey.conf"

// StartupScript returns a bash script for a virtual machine whose image runs a startup
// script at every boot but not necessarily cloud-init (a GCP instance's
// metadata-startup-script). It writes the host key to /etc/ssh/ssh_host_ed25519_key (0600)
// and .pub (0644) before it (re)starts sshd, makes sshd serve it, writes the lease settings
// to LeaseEnvPath, installs the watchdog and starts it as a transient systemd unit that
// powers the machine off. It is idempotent: a second run (a reboot) leaves the same state.
// sshd may already run with the image's keys before it: a first connection can meet
// another key and must retry. The authorised keys travel separately (GCP's ssh-keys
// metadata) and are not part of the script. The result holds the host private key: keep
// it secret.
func StartupScript(m Machine) (string, error) {
	var b strings.Builder
	b.WriteString("#!/bin/bash\n")
	b.WriteString("# understudy boot: the service's SSH host key, the lease settings and the dead-man's switch.\n")
	b.WriteString("# Idempotent: the cloud runs it at every boot.\n")
	b.WriteString("set -euo pipefail\numask 077\n")
	b.WriteString("install -d -m 0755 /etc/ssh /etc/understudy\n")
	if m.HostPrivateKey != "" {
		pub, err := publicKey(m.HostPrivateKey)
		if err != nil {
			return "", err
		}
		priv := base64.StdEncoding.EncodeToString([]byte(strings.TrimSpace(m.HostPrivateKey) + "\n"))
		fmt.Fprintf(&b, "key=/etc/ssh/ssh_host_ed25519_key\n")
		fmt.Fprintf(&b, "tmp=$(mktemp /etc/ssh/.understudy-hostkey.XXXXXX)\n")
		fmt.Fprintf(&b, "printf '%%s' %s | base64 -d >\"$tmp\"\n", shellQuote(priv))
		b.WriteString("chmod 0600 \"$tmp\"\nchown root:root \"$tmp\"\nmv -f \"$tmp\" \"$key\"\n")
		fmt.Fprintf(&b, "printf '%%s\\n' %s >\"$key.pub\"\n", shellQuote(pub))
		b.WriteString("chmod 0644 \"$key.pub\"\n")
		b.WriteString("if [ -d /etc/ssh/sshd_config.d ]; then\n")
		fmt.Fprintf(&b, "  printf 'HostKey %%s\\n' \"$key\" >%s\n  chmod 0644 %s\n", HostKeyDropIn, HostKeyDropIn)
		b.WriteString("fi\n")
		b.WriteString("systemctl restart ssh.service 2>/dev/null || systemctl restart sshd.service\n")
	}
	fmt.Fprintf(&b, "cat >%s <<'UNDERSTUDY_LEASE_EOF'\n%sUNDERSTUDY_LEASE_EOF\n", LeaseEnvPath, m.Lease.envFile())
	fmt.Fprintf(&b, "chmod 0600 %s\n", LeaseEnvPath)
	fmt.Fprintf(&b, "printf '%%s' %s | base64 -d >%s\n", shellQuote(base64.StdEncoding.EncodeToString([]byte(watchdog))), WatchdogPath)
	fmt.Fprintf(&b, "chmod 0700 %s\n", WatchdogPath)
	fmt.Fprintf(&b, "systemctl stop %s.service 2>/dev/null || true\n", watchdogUnit)
	fmt.Fprintf(&b, "systemctl reset-failed %s.service 2>/dev/null || true\n", watchdogUnit)
	fmt.Fprintf(&b, "systemd-run --unit=%s --property=EnvironmentFile=%s %s poweroff\n", watchdogUnit, LeaseEnvPath, WatchdogPath)
	return b.String(), nil
}

// envFile renders the lease settings as LeaseEnvPath holds them.
func (l Lease) envFile() string {
	var b strings.Builder
	env := l.env()
	for _, k := range []string{EnvLeaseFile, EnvLeaseSeconds, EnvDeadline} {
		// A newline would start another setting; the service's paths have none.
		fmt.Fprintf(&b, "%s=%s\n", k, strings.NewReplacer("\n", "", "\r", "").Replace(env[k]))
	}
	return b.String()
}

// publicKey returns the authorized_keys line of an OpenSSH PEM private key.
func publicKey(privatePEM string) (string, error) {
	signer, err := ssh.ParsePrivateKey([]byte(privatePEM))
	if err != nil {
		return "", fmt.Errorf("parse host key: %w", err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))), nil
}

// shellQuote quotes s for bash as one word.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func trimmed(lines []string) []string {
	var out []string
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
