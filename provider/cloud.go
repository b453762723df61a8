package provider

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	p "github.com/pulumi/pulumi-go-provider"
	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/provider/boot"
	"github.com/understudy-ai/training-service/provider/cloudapi"
	"github.com/understudy-ai/training-service/provider/sshd"
)

// Host key trust, reported in the hostKeyTrust output of cloud machines.
const (
	// TrustInjected: the service generated the host key and the machine installed it before
	// sshd started, so the first connection was already pinned.
	TrustInjected = "injected"
	// TrustFirstUse: the cloud would not take the key at boot; the key the machine presented
	// first was pinned for the rest of the job.
	TrustFirstUse = "first-use"
)

// apiKey reads a cloud's API key from the provider's environment (name, or the file named
// by name_FILE). Both the service and an operator's `pulumi destroy` run the provider with
// their environment, so the key never enters the stack's state.
func apiKey(name string) (string, error) {
	key, err := cloudapi.Secret(name)
	if err != nil {
		return "", &cloudapi.Error{Provider: strings.ToLower(strings.TrimSuffix(name, "_API_KEY")), Op: "read API key",
			Reason: cloudapi.ReasonAuth, Message: err.Error() + " in the environment of the understudy provider"}
	}
	return key, nil
}

// machineArgs are the inputs every cloud machine shares.
type machineArgs struct {
	authorizedKeys []string
	hostPrivateKey string
	workDir        string
	leaseSeconds   int
	deadline       int
}

// check validates the shared inputs and returns the host public key ("" without a host key).
func (m machineArgs) check() (string, error) {
	if len(m.authorizedKeys) == 0 {
		return "", errors.New("authorizedKeys: want at least the job's key")
	}
	for i, k := range m.authorizedKeys {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
			return "", fmt.Errorf("authorizedKeys[%d]: %w", i, err)
		}
	}
	if !path.IsAbs(m.workDir) {
		return "", fmt.Errorf("workDir %q: want an absolute path on the machine", m.workDir)
	}
	if m.leaseSeconds < 0 || m.deadline < 0 {
		return "", errors.New("leaseSeconds and deadline must not be negative")
	}
	if m.hostPrivateKey == "" {
		return "", nil
	}
	signer, err := ssh.ParsePrivateKey([]byte(m.hostPrivateKey))
	if err != nil {
		return "", fmt.Errorf("hostPrivateKey: parse: %w", err)
	}
	if signer.PublicKey().Type() != ssh.KeyAlgoED25519 {
		return "", fmt.Errorf("hostPrivateKey: want an ed25519 key, got %s", signer.PublicKey().Type())
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))), nil
}

// boot is what the machine runs at boot: the host key and the dead-man's switch, whose
// lease file lies in the job's work dir.
func (m machineArgs) boot() boot.Machine {
	return boot.Machine{
		HostPrivateKey: m.hostPrivateKey,
		AuthorizedKeys: m.authorizedKeys,
		Lease: boot.Lease{
			File:     path.Join(m.workDir, "lease"),
			Seconds:  m.leaseSeconds,
			Deadline: int64(m.deadline),
		},
	}
}

// scanHostKey waits until the machine's sshd answers and returns its host key, for a
// machine whose key could not be installed at boot (trust on first use).
func scanHostKey(ctx context.Context, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		key, err := sshd.ScanHostKey(ctx, addr)
		if err == nil {
			return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("read the host key of %s: %w", addr, err)
		case <-time.After(2 * time.Second):
		}
	}
}

// status logs a progress line to the engine, which the service appends to the job's log.
func status(ctx context.Context, format string, args ...any) {
	p.GetLogger(ctx).InfoStatusf(format, args...)
}

// info logs a line to the engine.
func info(ctx context.Context, format string, args ...any) {
	p.GetLogger(ctx).Infof(format, args...)
}

// timeoutOr turns seconds into a duration, def when seconds is 0.
func timeoutOr(seconds int, def time.Duration) time.Duration {
	if seconds > 0 {
		return time.Duration(seconds) * time.Second
	}
	return def
}

// replaceOnAnyChange is the Diff of machines: a machine is never changed in place.
func replaceOnAnyChange(changed map[string]bool) (resp diffResult) {
	resp.detailed = map[string]p.PropertyDiff{}
	for name, c := range changed {
		if c {
			resp.has = true
			resp.detailed[name] = p.PropertyDiff{Kind: p.UpdateReplace, InputDiff: true}
		}
	}
	return resp
}

type diffResult struct {
	has      bool
	detailed map[string]p.PropertyDiff
}

func envOr(name, def string) string {
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v
	}
	return def
}

// pollInterval is how often the cloud resources look at a machine that is starting or
// going away.
const pollInterval = 2 * time.Second
