package lifecycle

import (
	"context"
	"io/fs"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/job"
)

// MachineRequest is what the Driver asks a Provisioner for.
type MachineRequest struct {
	TrainID    string
	EndpointID string
	Version    int
	Provider   string
	// AuthorizedKey is the job's public SSH key (authorized_keys format).
	AuthorizedKey string
	// HostPrivateKey is the OpenSSH PEM private host key the machine must present; its public
	// half comes back as Machine.HostKey and is pinned by the runner.
	HostPrivateKey string
	// Options are the job's machine choices (GPU type, spot).
	Options MachineOptions
	// LeaseSeconds arms the machine's dead-man's switch (0: off); Deadline is when the
	// machine stops itself whatever happens (zero: never).
	LeaseSeconds int
	Deadline     time.Time
}

// MachineOptions are the machine choices of a job's request.
type MachineOptions struct {
	GPUType          string
	Spot             bool
	OnDemandFallback bool
}

// MachineHealth is a job's machine as its provider reports it now.
type MachineHealth struct {
	Exists    bool   // false: the provider no longer has the machine
	Running   bool   // it runs and can be reached
	Preempted bool   // a spot machine its cloud stopped
	Status    string // the provider's word for its state
}

// Provisioner creates and destroys the one stack of each job.
type Provisioner interface {
	// Provision creates or converges the job's stack and returns its machine.
	Provision(ctx context.Context, req MachineRequest, log func(string)) (job.Machine, error)
	// Machine returns the machine recorded in an existing stack; job.CodeNotFound when the
	// job has no stack or the stack has no machine.
	Machine(ctx context.Context, trainID string) (job.Machine, error)
	// Teardown destroys and removes the job's stack. A missing stack is success.
	Teardown(ctx context.Context, trainID string, log func(string)) error
	// Stacks lists the names of every stack in the backend.
	Stacks(ctx context.Context) ([]string, error)
	// ResourceIDs returns the provider ids of every resource every stack tracks, each
	// mapped to its stack.
	ResourceIDs(ctx context.Context) (map[string]string, error)
	// Inspect asks the provider about the job's machine now (pulumi refresh);
	// job.CodeNotFound when the job has no stack.
	Inspect(ctx context.Context, trainID, provider string) (MachineHealth, error)
	// Check reports, as a job.CodeInvalidArgument error, what of req's provider and options
	// cannot be provisioned: an unknown or unconfigured provider (reason
	// provider_not_configured, naming what is missing), options the provider cannot honour.
	Check(req MachineRequest) error
}

// Connector opens SSH sessions to machines, always pinning m.HostKey.
type Connector interface {
	Connect(ctx context.Context, m job.Machine, signer ssh.Signer) (Session, error)
}

// Session is one SSH connection to a job's machine.
type Session interface {
	// Run runs a short command and returns its stdout.
	Run(ctx context.Context, cmd string) ([]byte, error)
	// Upload copies fsys into remoteDir.
	Upload(ctx context.Context, fsys fs.FS, remoteDir string) error
	// UploadFile copies one local file to remotePath.
	UploadFile(ctx context.Context, localPath, remotePath string) error
	// Start starts command detached in workDir; it never starts a second run.
	Start(ctx context.Context, workDir, command string, env map[string]string) error
	// Follow streams the run's progress from offset until it exits, and returns its exit
	// code. A lost connection is a job.CodeUnavailable error.
	Follow(ctx context.Context, workDir string, offset int64, onLine func(line []byte, end int64) error) (int, error)
	// Signal sends sig ("TERM", "KILL") to the run's process group.
	Signal(ctx context.Context, workDir, sig string) error
	// Download stores every file under remoteDir in the weights store under prefix,
	// checks them against expected (path → sha256) and verifies what was stored.
	Download(ctx context.Context, remoteDir, prefix string, expected map[string]string) ([]job.ManifestFile, error)
	// Restore copies files, stored in the weights store under prefix, into remoteDir, and
	// checks each copy on the machine against its sha256.
	Restore(ctx context.Context, prefix, remoteDir string, files []job.ManifestFile) error
	Close() error
}

// HubChecker says whether a Hugging Face Hub id names a model there. Check returns nil when
// it does; otherwise an error that is (errors.Is) hubcheck.ErrInvalidID,
// hubcheck.ErrNotFound or hubcheck.ErrUnreachable, best a *hubcheck.Error that names the
// endpoint and the cause, or ctx's error when ctx ended first. It must honour ctx and
// return within a few seconds.
type HubChecker interface {
	Check(ctx context.Context, id string) error
}

// BlobRemover deletes one object of the weights store by key (*blob.Bucket is one). An
// object that is not there is not an error the Driver reports.
type BlobRemover interface {
	Delete(ctx context.Context, key string) error
}
