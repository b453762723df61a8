package lifecycle

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"strings"
	"testing/fstest"
	"time"

	"gocloud.dev/blob"
	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/sshrunner"
)

// sshConnector is the production Connector: sshrunner clients that store downloads in the
// weights bucket.
type sshConnector struct {
	weights *blob.Bucket
	log     *slog.Logger
}

// NewSSHConnector returns a Connector over sshrunner that downloads into weights.
func NewSSHConnector(weights *blob.Bucket, log *slog.Logger) Connector {
	return &sshConnector{weights: weights, log: log}
}

func (c *sshConnector) Connect(ctx context.Context, m job.Machine, signer ssh.Signer) (Session, error) {
	cl, err := sshrunner.Dial(ctx, sshrunner.Target{Host: m.Host, Port: m.Port, User: m.User, HostKey: m.HostKey, Signer: signer},
		&sshrunner.Options{Logger: c.log})
	if err != nil {
		return nil, err
	}
	return &sshSession{Client: cl, weights: c.weights}, nil
}

type sshSession struct {
	*sshrunner.Client
	weights *blob.Bucket
}

func (s *sshSession) Download(ctx context.Context, remoteDir, prefix string, expected map[string]string) ([]job.ManifestFile, error) {
	prefix = strings.TrimRight(prefix, "/")
	m, err := s.Client.Download(ctx, remoteDir, s.weights, prefix, &sshrunner.DownloadOptions{Expected: expected})
	if err != nil {
		return nil, err
	}
	// Download already checked every file the runtime reported against its sha256 as it
	// wrote it (a mismatch stores nothing). Only files the runtime did not report have no
	// independent hash: read those back before the machine, and its copy, goes away.
	var unchecked sshrunner.Manifest
	for _, f := range m.Files {
		if _, ok := expected[f.Path]; !ok {
			unchecked.Files = append(unchecked.Files, f)
		}
	}
	if len(unchecked.Files) > 0 {
		if err := sshrunner.Verify(ctx, s.weights, prefix, unchecked); err != nil {
			return nil, &job.Error{Code: job.CodeOf(err), Reason: job.ReasonVerifyFailed, Message: "verify the stored weights", Err: err}
		}
	}
	out := make([]job.ManifestFile, len(m.Files))
	for i, f := range m.Files {
		out[i] = job.ManifestFile{Path: f.Path, Size: f.Size, SHA256: f.SHA256}
	}
	return out, nil
}

// Restore uploads the stored files under prefix into remoteDir, then has the machine hash
// its copies: a file that does not match its manifest entry fails the restore.
func (s *sshSession) Restore(ctx context.Context, prefix, remoteDir string, files []job.ManifestFile) error {
	prefix = strings.TrimRight(prefix, "/")
	tree := fstest.MapFS{}
	for _, f := range files {
		if !fs.ValidPath(f.Path) || f.Path == "." {
			return job.Errorf(job.CodeInternal, "restore: bad stored path %q", f.Path)
		}
		tree[f.Path] = &fstest.MapFile{Mode: 0o600}
	}
	if err := s.Client.Upload(ctx, storeFS{tree: tree, bucket: s.weights, prefix: prefix, ctx: ctx}, remoteDir); err != nil {
		return err
	}
	var cmd strings.Builder
	cmd.WriteString("cd -- " + shellQuote(remoteDir) + " && sha256sum --")
	for _, f := range files {
		cmd.WriteString(" " + shellQuote(f.Path))
	}
	out, err := s.Client.Run(ctx, cmd.String())
	if err != nil {
		return job.Wrap(job.CodeOf(err), err, "restore: hash the copies")
	}
	got := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if sum, p, ok := strings.Cut(line, "  "); ok {
			got[p] = sum
		}
	}
	for _, f := range files {
		if got[f.Path] != f.SHA256 {
			return &job.Error{Code: job.CodeFailedPrecondition, Reason: job.ReasonVerifyFailed,
				Message: fmt.Sprintf("restore: %s on the machine does not match its stored sha256", f.Path)}
		}
	}
	return nil
}

// storeFS is a directory tree whose files are read from the weights store.
type storeFS struct {
	tree   fstest.MapFS
	bucket *blob.Bucket
	prefix string
	ctx    context.Context
}

func (f storeFS) Open(name string) (fs.File, error) {
	mf, ok := f.tree[name]
	if !ok || mf.Mode.IsDir() {
		return f.tree.Open(name)
	}
	r, err := f.bucket.NewReader(f.ctx, f.prefix+"/"+name, nil)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return storeFile{r: r, name: name}, nil
}

type storeFile struct {
	r    *blob.Reader
	name string
}

func (f storeFile) Read(p []byte) (int, error) { return f.r.Read(p) }
func (f storeFile) Close() error               { return f.r.Close() }
func (f storeFile) Stat() (fs.FileInfo, error) {
	return storeInfo{name: path.Base(f.name), size: f.r.Size(), mod: f.r.ModTime()}, nil
}

type storeInfo struct {
	name string
	size int64
	mod  time.Time
}

func (i storeInfo) Name() string       { return i.name }
func (i storeInfo) Size() int64        { return i.size }
func (i storeInfo) Mode() fs.FileMode  { return 0o600 }
func (i storeInfo) ModTime() time.Time { return i.mod }
func (i storeInfo) IsDir() bool        { return false }
func (i storeInfo) Sys() any           { return nil }
