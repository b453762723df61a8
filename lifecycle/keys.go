package lifecycle

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// jobKeys are a job's SSH keys: the client key the runner logs in with (kept 0600 in the
// data dir until teardown, so a restarted service can reattach) and the host key the machine
// presents (handed to the stack as a secret; only its public half is kept).
type jobKeys struct {
	Signer         ssh.Signer
	AuthorizedKey  string
	HostPrivatePEM string
}

func keyPath(dataDir, trainID string) string {
	return filepath.Join(keysDir(dataDir), trainID, "id_ed25519")
}

// newJobKeys makes and stores a fresh client key and host key for trainID.
func newJobKeys(dataDir, trainID string) (*jobKeys, error) {
	_, clientPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate client key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(clientPriv, "understudy-job-"+trainID)
	if err != nil {
		return nil, fmt.Errorf("encode client key: %w", err)
	}
	dir := filepath.Dir(keyPath(dataDir, trainID))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store client key: %w", err)
	}
	if err := os.WriteFile(keyPath(dataDir, trainID), pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, fmt.Errorf("store client key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(clientPriv)
	if err != nil {
		return nil, fmt.Errorf("load client key: %w", err)
	}
	_, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate host key: %w", err)
	}
	hblock, err := ssh.MarshalPrivateKey(hostPriv, "understudy-host-"+trainID)
	if err != nil {
		return nil, fmt.Errorf("encode host key: %w", err)
	}
	return &jobKeys{
		Signer:         signer,
		AuthorizedKey:  strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))),
		HostPrivatePEM: string(pem.EncodeToMemory(hblock)),
	}, nil
}

// loadSigner reads a job's stored client key, refusing one that others can read.
func loadSigner(dataDir, trainID string) (ssh.Signer, error) {
	p := keyPath(dataDir, trainID)
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("load client key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("load client key: %s is readable by others (mode %o)", p, st.Mode().Perm())
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("load client key: %w", err)
	}
	return ssh.ParsePrivateKey(raw)
}

// removeKeys deletes a job's key directory.
func removeKeys(dataDir, trainID string) error {
	err := os.RemoveAll(filepath.Dir(keyPath(dataDir, trainID)))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func newToken() (string, string) {
	b := make([]byte, 32)
	rand.Read(b)
	tok := hex.EncodeToString(b)
	sum := sha256.Sum256([]byte(tok))
	return tok, hex.EncodeToString(sum[:])
}

func tokenMatches(token, wantSHA string) bool {
	sum := sha256.Sum256([]byte(token))
	got := hex.EncodeToString(sum[:])
	return subtle.ConstantTimeCompare([]byte(got), []byte(wantSHA)) == 1
}
