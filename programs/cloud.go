package programs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"path"
	"regexp"
	"strings"
)

// MachinePrefix begins the name of every machine and key the service makes at a cloud, so
// that `understudy-train stacks gc` can tell them from the account's other machines.
const MachinePrefix = "understudy-"

// maxMachineName is the longest name every cloud takes (Lambda allows 64).
const maxMachineName = 64

// MachineName is the name of a job's machine (and of its registered SSH key) at a cloud:
// MachinePrefix and the train_id when that is shorter than the longest name (64), else its
// first characters, "-" and 12 hex digits of the train_id's sha256, exactly 64 long. A
// shortened name is never the name of a shorter train_id, which is why a name of exactly 64
// is always shortened: it is unique per job, and after an ambiguous create the machine is
// looked up by it.
func MachineName(trainID string) string {
	name := MachinePrefix + trainID
	if len(name) < maxMachineName {
		return name
	}
	sum := sha256.Sum256([]byte(trainID))
	keep := maxMachineName - len(MachinePrefix) - 13
	return MachinePrefix + trainID[:keep] + "-" + hex.EncodeToString(sum[:])[:12]
}

// hashedSuffix matches the end of a name CloudName shortened or rewrote.
var hashedSuffix = regexp.MustCompile(`-[0-9a-f]{8}$`)

// machineWorkDir is the job's directory on a cloud machine.
func machineWorkDir(base, trainID string) string { return path.Join(base, trainID) }

// leaseFile is the file the service touches to renew the lease of a machine's dead-man's
// switch: it lies in the job's directory.
func leaseFile(workDir string) string { return path.Join(workDir, "lease") }

// checkWorkDir validates a configured base directory on the machine.
func checkWorkDir(field, dir string) error {
	if !path.IsAbs(dir) || strings.ContainsAny(dir, "\n\x00") {
		return fmt.Errorf("%s %q: want an absolute path on the machine", field, dir)
	}
	return nil
}

// deadlineUnix is the spec's deadline in unix seconds, 0 for none.
func deadlineUnix(spec Spec) int {
	if spec.Deadline.IsZero() {
		return 0
	}
	return int(spec.Deadline.Unix())
}

// CloudName is a name for one of a job's resources at a cloud that takes only lowercase
// letters, digits and '-', starting with a letter and at most maxLen characters (GCP: 63,
// Azure Linux VMs: 64, AWS: 255): MachinePrefix and the train_id. When the train_id had to
// change to fit (upper case, '_' or '.', a trailing '-', or too long), the name ends in '-'
// and 8 hex digits of the train_id's sha256, so that "Job_A" and "job-a" never share a name.
// A train_id that itself ends like that ("job-a-1a2b3c4d") is hashed too, so that no
// train_id can take the name another one was given. maxLen below 24 counts as 24.
func CloudName(trainID string, maxLen int) string {
	maxLen = max(maxLen, 24)
	var b strings.Builder
	for _, r := range strings.ToLower(trainID) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	clean := b.String()
	if clean == trainID && len(MachinePrefix)+len(clean) <= maxLen && !strings.HasSuffix(clean, "-") && clean != "" &&
		!hashedSuffix.MatchString(clean) {
		return MachinePrefix + clean
	}
	sum := sha256.Sum256([]byte(trainID))
	suffix := hex.EncodeToString(sum[:])[:8]
	keep := maxLen - len(MachinePrefix) - len(suffix) - 1
	if len(clean) > keep {
		clean = clean[:keep]
	}
	clean = strings.Trim(clean, "-")
	if clean == "" {
		return MachinePrefix + suffix
	}
	return MachinePrefix + clean + "-" + suffix
}

// checkIngress validates the address ranges a cloud firewall admits SSH from: at least one,
// each a CIDR. "0.0.0.0/0" and "::/0" are taken only because they were written out: they
// open the machine's sshd to the internet (its keys still guard it), which is discouraged.
func checkIngress(cidrs []string) error {
	if len(cidrs) == 0 {
		return errors.New("SSHIngressCIDRs: want at least one address range the service connects from (such as 203.0.113.7/32)")
	}
	for _, c := range cidrs {
		if _, _, err := net.ParseCIDR(c); err != nil {
			return fmt.Errorf("SSHIngressCIDRs: %q is not a CIDR such as 203.0.113.7/32", c)
		}
	}
	return nil
}

// ipv4Ranges picks the IPv4 ranges of cidrs.
func ipv4Ranges(cidrs []string) []string {
	var out []string
	for _, c := range cidrs {
		if !strings.Contains(c, ":") {
			out = append(out, c)
		}
	}
	return out
}

// refuseFallback is the answer of the programs that cannot fall back from spot to on-demand
// within one deployment.
func refuseFallback(spec Spec) error {
	if spec.Machine.OnDemandFallback {
		return errors.New("on_demand_fallback is supported on runpod only")
	}
	return nil
}

// defaultString returns the first non-empty value.
func defaultString(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// defaultInt returns v, or def when v is 0.
func defaultInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}
