package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	p "github.com/pulumi/pulumi-go-provider"
	"github.com/pulumi/pulumi-go-provider/infer"
	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/provider/sshd"
)

// WorkerEnv is the environment variable that every process of a local worker's SSH sessions
// carries, set to the worker's directory. Delete terminates the processes that carry it.
const WorkerEnv = "UNDERSTUDY_WORKER"

// DefaultSSHDPath is the OpenSSH server started when LocalWorkerArgs.SSHDPath is empty.
const DefaultSSHDPath = sshd.DefaultPath

var trainIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// LocalWorker is a machine on this host reached over real SSH: an OpenSSH sshd started for
// one job only, listening on a free loopback port, that accepts exactly the job's key and
// presents the host key the service generated. Any change of its inputs replaces it.
type LocalWorker struct{}

// LocalWorkerArgs are the inputs of a LocalWorker.
type LocalWorkerArgs struct {
	TrainID        string            `pulumi:"trainId"`
	HostPrivateKey string            `pulumi:"hostPrivateKey" provider:"secret"`
	AuthorizedKey  string            `pulumi:"authorizedKey"`
	BaseDir        string            `pulumi:"baseDir"`
	SSHDPath       string            `pulumi:"sshdPath,optional"`
	RunAs          string            `pulumi:"runAs,optional"`
	Tags           map[string]string `pulumi:"tags,optional"`
}

// LocalWorkerState is the state of a LocalWorker: its inputs and what Create made.
type LocalWorkerState struct {
	LocalWorkerArgs

	Host          string `pulumi:"host"`
	Port          int    `pulumi:"port"`
	User          string `pulumi:"user"`
	PID           int    `pulumi:"pid"`
	Dir           string `pulumi:"dir"`
	WorkDir       string `pulumi:"workDir"`
	HostPublicKey string `pulumi:"hostPublicKey"`
	InstanceID    string `pulumi:"instanceId"`
	GPU           string `pulumi:"gpu"`
	Running       bool   `pulumi:"running"`
}

// Annotate sets the resource's token and description.
func (w *LocalWorker) Annotate(a infer.Annotator) {
	a.SetToken("index", "LocalWorker")
	a.Describe(&w, "A machine on this host reached over real SSH: an OpenSSH sshd for one job only, on loopback.")
}

// Annotate describes the inputs.
func (a *LocalWorkerArgs) Annotate(an infer.Annotator) {
	an.Describe(&a.TrainID, "The training job's id; it names the worker directory.")
	an.Describe(&a.HostPrivateKey, "The worker's SSH host key: an OpenSSH PEM ed25519 private key.")
	an.Describe(&a.AuthorizedKey, "The job's public key, one ssh-ed25519 authorized_keys line.")
	an.Describe(&a.BaseDir, "The absolute directory under which per-job worker directories are made. "+
		"It and its parents must not be group- or world-writable (sshd StrictModes).")
	an.Describe(&a.SSHDPath, "The absolute path of the OpenSSH server.")
	an.SetDefault(&a.SSHDPath, DefaultSSHDPath)
	an.Describe(&a.RunAs, "The unprivileged user the job's sessions run as; empty means the user the provider runs as. "+
		"Another user needs the provider to run as root; root itself is refused.")
	an.Describe(&a.Tags, "Labels of the job (train id, endpoint, version, ...); written to the worker's tags file.")
}

// Annotate describes the outputs.
func (s *LocalWorkerState) Annotate(a infer.Annotator) {
	a.Describe(&s.Host, "The address sshd listens on.")
	a.Describe(&s.Port, "The port sshd listens on.")
	a.Describe(&s.User, "The user to log in as: runAs, or the user the provider runs as.")
	a.Describe(&s.PID, "The process id of the worker's sshd.")
	a.Describe(&s.Dir, "The worker's directory.")
	a.Describe(&s.WorkDir, "The directory inside the worker directory where the job's files go.")
	a.Describe(&s.HostPublicKey, "The worker's host public key in authorized_keys format.")
	a.Describe(&s.InstanceID, "The worker's id, unique on this host.")
	a.Describe(&s.GPU, "The host's GPUs as nvidia-smi names them (\"2x NVIDIA H100 80GB HBM3\"), or \"none\".")
	a.Describe(&s.Running, "Whether the worker's sshd was running when last read.")
}

// workerFiles names the files of one worker directory: its sshd's, the work dir and tags.
type workerFiles struct {
	sshd.Files
	workDir, tags string
}

func filesOf(dir string) workerFiles {
	return workerFiles{
		Files:   sshd.FilesOf(dir),
		workDir: filepath.Join(dir, "work"),
		tags:    filepath.Join(dir, "tags.json"),
	}
}

// checkedArgs are validated inputs with the derived host public key.
type checkedArgs struct {
	LocalWorkerArgs
	hostPub ssh.PublicKey
}

func checkArgs(in LocalWorkerArgs) (checkedArgs, error) {
	var c checkedArgs
	if !trainIDPattern.MatchString(in.TrainID) {
		return c, fmt.Errorf("trainId %q: want 1-128 characters of letters, digits, '_', '.', '-'", in.TrainID)
	}
	signer, err := ssh.ParsePrivateKey([]byte(in.HostPrivateKey))
	if err != nil {
		// The parser's error never quotes key material.
		return c, fmt.Errorf("hostPrivateKey: parse: %w", err)
	}
	if signer.PublicKey().Type() != ssh.KeyAlgoED25519 {
		return c, fmt.Errorf("hostPrivateKey: want an ed25519 key, got %s", signer.PublicKey().Type())
	}
	pub, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(in.AuthorizedKey))
	if err != nil {
		return c, fmt.Errorf("authorizedKey: parse: %w", err)
	}
	if pub.Type() != ssh.KeyAlgoED25519 {
		return c, fmt.Errorf("authorizedKey: want an ssh-ed25519 key, got %s", pub.Type())
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		return c, errors.New("authorizedKey: want exactly one key line")
	}
	if !filepath.IsAbs(in.BaseDir) {
		return c, fmt.Errorf("baseDir %q: want an absolute path", in.BaseDir)
	}
	if in.SSHDPath == "" {
		in.SSHDPath = DefaultSSHDPath
	}
	if !filepath.IsAbs(in.SSHDPath) {
		return c, fmt.Errorf("sshdPath %q: want an absolute path (sshd re-executes itself)", in.SSHDPath)
	}
	if st, err := os.Stat(in.SSHDPath); err != nil {
		return c, fmt.Errorf("sshdPath: %w", err)
	} else if st.IsDir() || st.Mode()&0o111 == 0 {
		return c, fmt.Errorf("sshdPath %q: not an executable file", in.SSHDPath)
	}
	if in.RunAs == "root" {
		return c, errors.New("runAs: jobs never run as root; name an unprivileged user")
	}
	in.BaseDir = filepath.Clean(in.BaseDir)
	c.LocalWorkerArgs = in
	c.hostPub = signer.PublicKey()
	return c, nil
}

// Create starts the job's sshd. A preview returns the inputs only. When the sshd cannot be
// brought up, Create removes what it made; only if that cleanup fails does it return
// infer.ResourceInitFailedError with the state, so that the worker stays in the stack and a
// destroy can remove it.
func (w *LocalWorker) Create(ctx context.Context, req infer.CreateRequest[LocalWorkerArgs]) (infer.CreateResponse[LocalWorkerState], error) {
	in, err := checkArgs(req.Inputs)
	if err != nil {
		return infer.CreateResponse[LocalWorkerState]{}, err
	}
	state := LocalWorkerState{LocalWorkerArgs: in.LocalWorkerArgs}
	if req.DryRun {
		return infer.CreateResponse[LocalWorkerState]{Output: state}, nil
	}
	u, uid, gid, other, err := sshd.RunAs(in.RunAs)
	if err != nil {
		return infer.CreateResponse[LocalWorkerState]{}, fmt.Errorf("runAs: %w", err)
	}
	if other && uid == 0 {
		return infer.CreateResponse[LocalWorkerState]{}, errors.New("runAs: jobs never run as root; name an unprivileged user")
	}
	if err := os.MkdirAll(in.BaseDir, 0o700); err != nil {
		return infer.CreateResponse[LocalWorkerState]{}, fmt.Errorf("create base dir: %w", err)
	}
	if err := sshd.CheckSafePath(in.BaseDir); err != nil {
		return infer.CreateResponse[LocalWorkerState]{}, fmt.Errorf("baseDir: %w", err)
	}
	dir, err := os.MkdirTemp(in.BaseDir, in.TrainID+"-")
	if err != nil {
		return infer.CreateResponse[LocalWorkerState]{}, fmt.Errorf("create worker dir: %w", err)
	}
	f := filesOf(dir)
	state.Host = "127.0.0.1"
	state.User = u.Username
	state.Dir = dir
	state.WorkDir = f.workDir
	state.HostPublicKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(in.hostPub)))
	state.InstanceID = "local-" + filepath.Base(dir)
	state.GPU = sshd.DetectGPU(ctx)

	owner := workOwner{uid: uid, gid: gid, other: other}
	pid, port, err := startWorker(ctx, in, f, owner)
	if err != nil {
		if cleanupErr := removeWorker(context.WithoutCancel(ctx), f, pid); cleanupErr != nil {
			state.PID = pid
			state.Port = port
			return infer.CreateResponse[LocalWorkerState]{ID: state.InstanceID, Output: state},
				infer.ResourceInitFailedError{Reasons: []string{
					fmt.Sprintf("start sshd: %v", err),
					fmt.Sprintf("clean up worker: %v", cleanupErr),
				}}
		}
		return infer.CreateResponse[LocalWorkerState]{}, fmt.Errorf("start sshd: %w", err)
	}
	state.PID = pid
	state.Port = port
	state.Running = true
	return infer.CreateResponse[LocalWorkerState]{ID: state.InstanceID, Output: state}, nil
}

// startWorker writes the worker's files and starts its sshd on a free port. It returns the
// sshd's pid (0 when none was found) and port.
func startWorker(ctx context.Context, in checkedArgs, f workerFiles, owner workOwner) (pid, port int, err error) {
	if err := os.MkdirAll(f.workDir, 0o700); err != nil {
		return 0, 0, fmt.Errorf("create work dir: %w", err)
	}
	if owner.other {
		// The job's user owns its work dir and nothing else of the worker's.
		if err := os.Chown(f.workDir, owner.uid, owner.gid); err != nil {
			return 0, 0, fmt.Errorf("give the work dir to the job's user: %w", err)
		}
	}
	if err := writeTags(f.tags, in.Tags); err != nil {
		return 0, 0, fmt.Errorf("write tags: %w", err)
	}
	return sshd.Start(ctx, f.Files, sshd.Config{
		SSHDPath:       in.SSHDPath,
		HostPrivateKey: in.HostPrivateKey,
		AuthorizedKeys: []string{in.AuthorizedKey},
		Tag:            WorkerEnv + "=" + f.Dir,
		Comment:        "sshd for one Understudy local worker; written by the understudy provider.",
		User:           in.RunAs,
	})
}

// workOwner is the user the job's sessions run as, when it is another than the provider's.
type workOwner struct {
	uid, gid int
	other    bool
}

// writeTags records the job's labels beside the worker, so that an operator looking at a
// worker directory can tell whose it is.
func writeTags(name string, tags map[string]string) error {
	if tags == nil {
		tags = map[string]string{}
	}
	data, err := json.MarshalIndent(tags, "", "  ")
	if err != nil {
		return err
	}
	return sshd.WriteFileExclusive(name, append(data, '\n'), 0o600)
}

// Diff compares the new inputs with those in state. Every input change replaces the worker:
// an sshd is never reconfigured in place. The new worker is created before the old one is
// deleted; they do not collide, since each gets its own directory and port.
func (w *LocalWorker) Diff(ctx context.Context, req infer.DiffRequest[LocalWorkerArgs, LocalWorkerState]) (infer.DiffResponse, error) {
	olds, news := req.State.LocalWorkerArgs, req.Inputs
	if olds.SSHDPath == "" {
		olds.SSHDPath = DefaultSSHDPath
	}
	if news.SSHDPath == "" {
		news.SSHDPath = DefaultSSHDPath
	}
	changed := map[string]bool{
		"trainId":        olds.TrainID != news.TrainID,
		"hostPrivateKey": olds.HostPrivateKey != news.HostPrivateKey,
		"authorizedKey":  olds.AuthorizedKey != news.AuthorizedKey,
		"baseDir":        olds.BaseDir != news.BaseDir,
		"sshdPath":       olds.SSHDPath != news.SSHDPath,
		"runAs":          olds.RunAs != news.RunAs,
		"tags":           !maps.Equal(olds.Tags, news.Tags),
	}
	resp := infer.DiffResponse{DetailedDiff: map[string]p.PropertyDiff{}}
	for name, c := range changed {
		if c {
			resp.HasChanges = true
			resp.DetailedDiff[name] = p.PropertyDiff{Kind: p.UpdateReplace, InputDiff: true}
		}
	}
	return resp, nil
}

// Read reports whether the worker still exists. A worker whose directory and sshd are both
// gone is reported with an empty ID, so that a refresh drops it from the stack.
func (w *LocalWorker) Read(ctx context.Context, req infer.ReadRequest[LocalWorkerArgs, LocalWorkerState]) (infer.ReadResponse[LocalWorkerArgs, LocalWorkerState], error) {
	state := req.State
	if state.Dir == "" {
		return infer.ReadResponse[LocalWorkerArgs, LocalWorkerState]{}, nil
	}
	f := filesOf(state.Dir)
	pid, running := sshd.PID(f.Files, state.PID)
	_, statErr := os.Stat(state.Dir)
	dirExists := statErr == nil
	if !running && !dirExists {
		return infer.ReadResponse[LocalWorkerArgs, LocalWorkerState]{}, nil
	}
	if running {
		state.PID = pid
	}
	state.Running = running
	return infer.ReadResponse[LocalWorkerArgs, LocalWorkerState]{
		ID:     req.ID,
		Inputs: req.Inputs,
		State:  state,
	}, nil
}

// Delete stops the worker's sshd (only the one whose command line names this worker's
// config), terminates every process that carries the worker's UNDERSTUDY_WORKER value, and
// removes the worker directory. Deleting a worker that is already gone succeeds.
func (w *LocalWorker) Delete(ctx context.Context, req infer.DeleteRequest[LocalWorkerState]) (infer.DeleteResponse, error) {
	state := req.State
	if state.Dir == "" {
		return infer.DeleteResponse{}, nil
	}
	if err := checkWorkerDir(state); err != nil {
		return infer.DeleteResponse{}, err
	}
	return infer.DeleteResponse{}, removeWorker(ctx, filesOf(state.Dir), state.PID)
}

// checkWorkerDir refuses to remove a directory that this resource did not make: it must be
// a direct child of baseDir named after the job.
func checkWorkerDir(state LocalWorkerState) error {
	dir := filepath.Clean(state.Dir)
	if !filepath.IsAbs(dir) || state.BaseDir == "" || filepath.Dir(dir) != filepath.Clean(state.BaseDir) ||
		!strings.HasPrefix(filepath.Base(dir), state.TrainID+"-") {
		return fmt.Errorf("worker dir %q is not a worker directory of job %q under %q", state.Dir, state.TrainID, state.BaseDir)
	}
	return nil
}

// removeWorker stops the sshd of f, ends the worker's session processes and removes its
// directory. statePID is the pid recorded in state, used when the pid file is gone.
func removeWorker(ctx context.Context, f workerFiles, statePID int) error {
	return sshd.Remove(ctx, f.Files, statePID, WorkerEnv+"="+f.Dir)
}
