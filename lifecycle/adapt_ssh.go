package lifecycle

import (
	"context"
	"log/slog"
	"strings"

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
