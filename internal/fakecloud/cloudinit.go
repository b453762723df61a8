package fakecloud

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"fmt"
	"io"
	"strings"

	"gopkg.in/yaml.v3"
)

// leaseEnvPath is the file of the cloud-config's write_files that holds the lease settings.
const leaseEnvPath = "/etc/understudy/lease.env"

// cloudConfig is the part of a #cloud-config document that the fake reads; cloud-init
// would act on much more, the fake on nothing else.
type cloudConfig struct {
	SSHKeys struct {
		ED25519Private string `yaml:"ed25519_private"`
	} `yaml:"ssh_keys"`
	SSHAuthorizedKeys []string    `yaml:"ssh_authorized_keys"`
	WriteFiles        []writeFile `yaml:"write_files"`
}

type writeFile struct {
	Path     string `yaml:"path"`
	Content  string `yaml:"content"`
	Encoding string `yaml:"encoding"`
}

// parseCloudConfig reads user data as cloud-init would a #cloud-config document. Other user
// data (a script, MIME) gives ok false: the fake never runs it.
func parseCloudConfig(userData string) (cc cloudConfig, ok bool, err error) {
	first, _, _ := strings.Cut(strings.TrimLeft(userData, "\ufeff"), "\n")
	if strings.TrimSpace(first) != "#cloud-config" {
		return cc, false, nil
	}
	if err := yaml.Unmarshal([]byte(userData), &cc); err != nil {
		return cloudConfig{}, false, fmt.Errorf("parse cloud-config: %w", err)
	}
	return cc, true, nil
}

// leaseEnv returns the KEY=VALUE settings of the lease.env file the config writes.
func (cc cloudConfig) leaseEnv() (map[string]string, error) {
	for _, f := range cc.WriteFiles {
		if f.Path != leaseEnvPath {
			continue
		}
		content, err := f.decode()
		if err != nil {
			return nil, err
		}
		return parseEnvLines(content), nil
	}
	return map[string]string{}, nil
}

// decode undoes write_files' encoding (b64, gzip, or both), as cloud-init does.
func (f writeFile) decode() (string, error) {
	data := []byte(f.Content)
	enc := strings.ToLower(f.Encoding)
	if strings.Contains(enc, "b64") || strings.Contains(enc, "base64") {
		d, err := base64.StdEncoding.DecodeString(strings.TrimSpace(f.Content))
		if err != nil {
			return "", fmt.Errorf("decode %s: %w", f.Path, err)
		}
		data = d
	}
	if strings.Contains(enc, "gz") {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return "", fmt.Errorf("decompress %s: %w", f.Path, err)
		}
		if data, err = io.ReadAll(io.LimitReader(zr, 1<<20)); err != nil {
			return "", fmt.Errorf("decompress %s: %w", f.Path, err)
		}
	}
	return string(data), nil
}

// parseEnvLines reads KEY=VALUE lines as a shell sourcing them would for plain values:
// comments and blank lines skipped, "export " dropped, one layer of quotes removed.
func parseEnvLines(text string) map[string]string {
	env := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		env[strings.TrimSpace(k)] = v
	}
	return env
}
