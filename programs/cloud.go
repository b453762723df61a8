package programs

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"strings"
)

// MachinePrefix begins the name of every machine and key the service makes at a cloud, so
// that `understudy-train stacks gc` can tell them from the account's other machines.
const MachinePrefix = "understudy-"

// maxMachineName is the longest name every cloud takes (Lambda allows 64).
const maxMachineName = 64

// MachineName is the name of a job's machine (and of its registered SSH key) at a cloud:
// MachinePrefix and the train_id, or for a long train_id its first characters, "-" and 8 hex
// digits of its sha256. It is unique per job: after an ambiguous create the machine is
// looked up by it.
func MachineName(trainID string) string {
	name := MachinePrefix + trainID
	if len(name) <= maxMachineName {
		return name
	}
	sum := sha256.Sum256([]byte(trainID))
	keep := maxMachineName - len(MachinePrefix) - 9
	return MachinePrefix + trainID[:keep] + "-" + hex.EncodeToString(sum[:])[:8]
}

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
