package sshdtest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/understudy-ai/training-service/sshrunner"
)

// SSHDPath is the sshd binary the server runs; sshd refuses to start from a relative path.
const SSHDPath = "/usr/sbin/sshd"

// Server is a running sshd. Its fields are read-only.
type Server struct {
	// Port is the TCP port on 127.0.0.1 the server listens on.
	Port int
	// User is the account clients log in as: the user running the test.
	User string
	// HostKeyLine is the server's public host key in authorized_keys format
	// ("ssh-ed25519 AAAA..."), the form a Target pins.
	HostKeyLine string
	// ClientSigner is the client key the server accepts.
	ClientSigner ssh.Signer
	// ClientKeyPath is ClientSigner's private key as an OpenSSH key file (mode 0600), for the
	// OpenSSH ssh, scp and sftp clients.
	ClientKeyPath string
	// KnownHostsPath is a known_hosts file that pins the host key for [127.0.0.1]:Port, for
	// the OpenSSH clients with StrictHostKeyChecking=yes.
	KnownHostsPath string
	// Dir is the server's private directory (config, keys, log).
	Dir string
	// ConfigPath and LogPath are the sshd config file and the sshd log.
	ConfigPath string
	LogPath    string
}

// Target returns what sshrunner needs to reach the server.
func (s *Server) Target() sshrunner.Target {
	return sshrunner.Target{
		Host:    "127.0.0.1",
		Port:    s.Port,
		User:    s.User,
		HostKey: s.HostKeyLine,
		Signer:  s.ClientSigner,
	}
}

// OpenSSHArgs returns the options that make the OpenSSH clients (ssh, scp, sftp) reach the
// server with its host key pinned and the client key, in batch mode.
func (s *Server) OpenSSHArgs() []string {
	return []string{
		"-F", "/dev/null",
		"-i", s.ClientKeyPath,
		"-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + s.KnownHostsPath,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes",
		"-o", "LogLevel=ERROR",
	}
}

// Log returns what sshd has logged so far, for failure messages.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.LogPath)
	return string(b)
}

// Start runs a fresh sshd for t and stops it when t ends. It fails t when sshd is not
// installed (Debian: apt-get install openssh-server) or does not come up.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := os.Stat(SSHDPath); err != nil {
		t.Fatalf("sshdtest: %s is required (Debian: apt-get install openssh-server): %v", SSHDPath, err)
	}
	u, err := user.Current()
	if err != nil {
		t.Fatalf("sshdtest: look up current user: %v", err)
	}
	if u.Uid == "0" {
		// sshd running as root insists on its privilege separation directory.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("sshdtest: create privilege separation directory: %v", err)
		}
	}

	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatalf("sshdtest: chmod server dir: %v", err)
	}
	s := &Server{User: u.Username, Dir: dir}

	hostPub, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("sshdtest: generate host key: %v", err)
	}
	_, clientPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("sshdtest: generate client key: %v", err)
	}
	hostKeyPath := filepath.Join(dir, "ssh_host_ed25519_key")
	writePrivateKey(t, hostKeyPath, hostPriv)
	s.ClientKeyPath = filepath.Join(dir, "client_ed25519_key")
	writePrivateKey(t, s.ClientKeyPath, clientPriv)

	hostSSHPub, err := ssh.NewPublicKey(hostPub)
	if err != nil {
		t.Fatalf("sshdtest: convert host key: %v", err)
	}
	s.HostKeyLine = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostSSHPub)))
	s.ClientSigner, err = ssh.NewSignerFromKey(clientPriv)
	if err != nil {
		t.Fatalf("sshdtest: convert client key: %v", err)
	}
	authorizedKeys := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorizedKeys, ssh.MarshalAuthorizedKey(s.ClientSigner.PublicKey()), 0o600); err != nil {
		t.Fatalf("sshdtest: write authorized_keys: %v", err)
	}

	s.ConfigPath = filepath.Join(dir, "sshd_config")
	s.LogPath = filepath.Join(dir, "sshd.log")

	// A port picked by the kernel can be taken by someone else before sshd binds it, so try
	// a few times.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("sshdtest: find free port: %v", err)
		}
		s.Port = port
		writeConfig(t, s, hostKeyPath, authorizedKeys)
		if lastErr = s.start(t); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("sshdtest: start sshd: %v\nsshd log:\n%s", lastErr, s.Log())
	}

	s.KnownHostsPath = filepath.Join(dir, "known_hosts")
	line := knownhosts.Line([]string{net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))}, hostSSHPub)
	if err := os.WriteFile(s.KnownHostsPath, []byte(line+"\n"), 0o600); err != nil {
		t.Fatalf("sshdtest: write known_hosts: %v", err)
	}
	return s
}

func writePrivateKey(t testing.TB, path string, key ed25519.PrivateKey) {
	t.Helper()
	block, err := ssh.MarshalPrivateKey(key, "sshdtest")
	if err != nil {
		t.Fatalf("sshdtest: marshal private key: %v", err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatalf("sshdtest: write private key: %v", err)
	}
}

func writeConfig(t testing.TB, s *Server, hostKeyPath, authorizedKeys string) {
	t.Helper()
	// StrictModes is off on purpose: the test directory lives under the system temp dir,
	// which is world-writable (sticky), and sshd's StrictModes walks every parent directory
	// of the authorized_keys file. The directory and key files are still owner-only.
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PidFile %s
Subsystem sftp internal-sftp
MaxStartups 100
MaxSessions 100
LogLevel VERBOSE
`, s.Port, hostKeyPath, authorizedKeys, filepath.Join(s.Dir, "sshd.pid"))
	if err := os.WriteFile(s.ConfigPath, []byte(cfg), 0o600); err != nil {
		t.Fatalf("sshdtest: write sshd config: %v", err)
	}
}

// start runs sshd in the foreground (-D) so that its process id is known without reading a
// pid file, registers its cleanup, and waits until it accepts connections.
func (s *Server) start(t testing.TB) error {
	cmd := exec.Command(SSHDPath, "-D", "-f", s.ConfigPath, "-E", s.LogPath)
	// If the test binary dies, take sshd with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run sshd: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	deadline := time.Now().Add(10 * time.Second)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("sshd exited: %v: %s", err, out.String())
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			stop(t, cmd.Process.Pid, s.ConfigPath, exited)
			return fmt.Errorf("wait for sshd on %s: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { stop(t, pid, s.ConfigPath, exited) })
	return nil
}

// stop ends the sshd with process id pid after checking that /proc/<pid>/cmdline names
// config, and ends its per-connection children first: a connection's sshd outlives the
// listener otherwise.
func stop(t testing.TB, pid int, config string, exited <-chan error) {
	t.Helper()
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(config)) {
		// Already gone (and reaped by the Wait goroutine), or the id was reused.
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			t.Errorf("sshdtest: sshd %d not reaped", pid)
		}
		return
	}
	for _, child := range children(pid) {
		_ = syscall.Kill(child, syscall.SIGTERM)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		t.Errorf("sshdtest: stop sshd %d: %v", pid, err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-exited
	}
}

// children returns the ids of the processes whose parent is pid.
func children(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var ids []int
	for _, e := range entries {
		id, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name in parentheses may hold spaces; the fields after the last ')'
		// are "state ppid ...".
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(fields[1]); err == nil && ppid == pid {
			ids = append(ids, id)
		}
	}
	return ids
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
