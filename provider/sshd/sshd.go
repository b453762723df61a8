// Package sshd runs one OpenSSH sshd per machine directory: its own config, host key and
// authorized keys, on a free loopback port, found again and stopped by the pid in its pid
// file after checking that the process's command line names that directory's config file —
// never by process name. It is shared by the local worker of the in-repo provider and by
// the fake clouds used in tests, whose machines are real sshd's too.
//
// Every process of a server's sessions carries the Config.Tag entry in its environment
// (sshd_config SetEnv), which is how Remove finds detached work started over SSH.
//
// The package imports nothing else of this module.
package sshd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// DefaultPath is the OpenSSH server started when Config.SSHDPath is empty.
const DefaultPath = "/usr/sbin/sshd"

// stopGrace is how long Stop waits after SIGTERM before it sends SIGKILL.
const stopGrace = 5 * time.Second

// readyTimeout bounds how long Start waits for a started sshd to accept connections.
const readyTimeout = 15 * time.Second

// Files names the files of one server directory.
type Files struct {
	Dir, HostKey, AuthorizedKeys, Config, PIDFile, Log string
}

// FilesOf returns the files of the server in dir.
func FilesOf(dir string) Files {
	return Files{
		Dir:            dir,
		HostKey:        filepath.Join(dir, "ssh_host_ed25519_key"),
		AuthorizedKeys: filepath.Join(dir, "authorized_keys"),
		Config:         filepath.Join(dir, "sshd_config"),
		PIDFile:        filepath.Join(dir, "sshd.pid"),
		Log:            filepath.Join(dir, "sshd.log"),
	}
}

// Config describes one server.
type Config struct {
	// SSHDPath is the absolute path of the OpenSSH server; empty means DefaultPath.
	SSHDPath string
	// HostPrivateKey is the server's host key, an OpenSSH PEM ed25519 private key.
	HostPrivateKey string
	// AuthorizedKeys are the public keys that may log in, one authorized_keys line each.
	AuthorizedKeys []string
	// Tag is an environment entry NAME=value that every session process carries.
	Tag string
	// Comment is the first line of the config file, naming who wrote it.
	Comment string
	// ListenAddress is the loopback address to listen on; empty means 127.0.0.1.
	ListenAddress string
	// Port is the port to listen on; 0 means a free one chosen by the kernel.
	Port int
	// User is the one user who may log in, whom the sessions run as; empty means the user
	// the server runs as. Another user needs a server started by root: then the authorized
	// keys are made readable to that user (sshd reads them as the user) and f.Dir
	// traversable but not listable, while the host key stays the server's alone.
	User string
}

// RunAs resolves a Config.User: the user's name, ids and whether it is another user than the
// one this process runs as.
func RunAs(name string) (u *user.User, uid, gid int, other bool, err error) {
	if name == "" {
		if u, err = user.Current(); err != nil {
			return nil, 0, 0, false, fmt.Errorf("look up current user: %w", err)
		}
	} else if u, err = user.Lookup(name); err != nil {
		return nil, 0, 0, false, fmt.Errorf("look up user %q: %w", name, err)
	}
	if uid, err = strconv.Atoi(u.Uid); err != nil {
		return nil, 0, 0, false, fmt.Errorf("user %q: uid %q", u.Username, u.Uid)
	}
	if gid, err = strconv.Atoi(u.Gid); err != nil {
		return nil, 0, 0, false, fmt.Errorf("user %q: gid %q", u.Username, u.Gid)
	}
	return u, uid, gid, uid != os.Geteuid(), nil
}

// Start writes the server's files into f.Dir (which must exist, be owner-only and accepted
// by sshd's StrictModes) and starts its sshd on a free loopback port, retrying with another
// port when the chosen one was taken in between. It returns the sshd's pid (0 when none was
// found) and port. On error the caller removes what was made with Stop and the directory.
func Start(ctx context.Context, f Files, cfg Config) (pid, port int, err error) {
	if cfg.SSHDPath == "" {
		cfg.SSHDPath = DefaultPath
	}
	signer, err := ssh.ParsePrivateKey([]byte(cfg.HostPrivateKey))
	if err != nil {
		return 0, 0, fmt.Errorf("parse host key: %w", err)
	}
	u, _, _, other, err := RunAs(cfg.User)
	if err != nil {
		return 0, 0, err
	}
	if strings.ContainsAny(u.Username, " \t\n*?!,\"") {
		return 0, 0, fmt.Errorf("user %q: a name sshd's AllowUsers cannot hold", u.Username)
	}
	keysMode := os.FileMode(0o600)
	if other {
		if os.Geteuid() != 0 {
			return 0, 0, fmt.Errorf("sessions as user %q need a server started by root", u.Username)
		}
		// The user reads the (public) authorized keys through the directory; it may not
		// list the directory or read anything else in it.
		keysMode = 0o644
		if err := os.Chmod(f.Dir, 0o711); err != nil {
			return 0, 0, fmt.Errorf("machine dir: %w", err)
		}
	}
	cfg.User = u.Username
	if err := writeFileExclusive(f.HostKey, []byte(strings.TrimSpace(cfg.HostPrivateKey)+"\n"), 0o600); err != nil {
		return 0, 0, fmt.Errorf("write host key: %w", err)
	}
	var keys strings.Builder
	for _, k := range cfg.AuthorizedKeys {
		if k = strings.TrimSpace(k); k != "" {
			keys.WriteString(k + "\n")
		}
	}
	if err := writeFileExclusive(f.AuthorizedKeys, []byte(keys.String()), keysMode); err != nil {
		return 0, 0, fmt.Errorf("write authorized keys: %w", err)
	}
	// Only a server started by root separates privileges, into /run/sshd.
	if os.Geteuid() == 0 {
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return 0, 0, fmt.Errorf("create sshd privilege separation dir: %w", err)
		}
	}
	if cfg.ListenAddress == "" {
		cfg.ListenAddress = "127.0.0.1"
	}
	const attempts = 3
	for attempt := 1; ; attempt++ {
		port = cfg.Port
		if port == 0 {
			if port, err = freePort(ctx, cfg.ListenAddress); err != nil {
				return 0, 0, err
			}
		}
		if err := os.WriteFile(f.Config, []byte(configText(f, cfg, port)), 0o600); err != nil {
			return 0, 0, fmt.Errorf("write sshd config: %w", err)
		}
		pid, err = runSSHD(ctx, cfg.SSHDPath, f, cfg.ListenAddress, port, signer.PublicKey())
		if err == nil || !errors.Is(err, errAddrInUse) || attempt == attempts || cfg.Port != 0 {
			return pid, port, err
		}
		// Another process took the port between our probe and sshd's bind: try another one.
		if stopErr := Stop(ctx, f, 0); stopErr != nil {
			return pid, port, errors.Join(err, stopErr)
		}
	}
}

func configText(f Files, cfg Config, port int) string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	comment := cfg.Comment
	if comment == "" {
		comment = "sshd for one machine directory"
	}
	line("# %s", comment)
	line("Port %d", port)
	line("ListenAddress %s", cfg.ListenAddress)
	line("HostKey %s", f.HostKey)
	line("AuthorizedKeysFile %s", f.AuthorizedKeys)
	line("PubkeyAuthentication yes")
	line("PasswordAuthentication no")
	line("KbdInteractiveAuthentication no")
	line("UsePAM no")
	line("PidFile %s", f.PIDFile)
	line("Subsystem sftp internal-sftp")
	line("StrictModes yes")
	line("PrintMotd no")
	// Only the job's runner logs in, as one user, to run commands and SFTP: no tunnels, no
	// agent or X11 forwarding, few guesses, no half-open logins, dead clients dropped.
	line("DisableForwarding yes")
	line("X11Forwarding no")
	line("PermitTunnel no")
	line("PermitUserEnvironment no")
	line("AllowUsers %s", cfg.User)
	line("MaxAuthTries 3")
	line("LoginGraceTime 30")
	line("ClientAliveInterval 15")
	line("ClientAliveCountMax 4")
	if cfg.Tag != "" {
		line("SetEnv %s", cfg.Tag)
	}
	return b.String()
}

// WriteFileExclusive creates name with data and perm; it fails when name exists.
func WriteFileExclusive(name string, data []byte, perm os.FileMode) error {
	return writeFileExclusive(name, data, perm)
}

func writeFileExclusive(name string, data []byte, perm os.FileMode) error {
	fh, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := fh.Write(data); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}

// Remove stops the server of f, ends every process that carries tag (when not empty) and
// removes f.Dir. statePID is a pid recorded elsewhere, used when the pid file is gone.
func Remove(ctx context.Context, f Files, statePID int, tag string) error {
	var errs []error
	if err := Stop(ctx, f, statePID); err != nil {
		errs = append(errs, err)
	}
	if tag != "" {
		if err := KillTagged(ctx, tag); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(f.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove machine dir: %w", err))
		}
	}
	return errors.Join(errs...)
}

// errAddrInUse reports that sshd could not bind its port because another process holds it.
var errAddrInUse = errors.New("address already in use")

// freePort asks the kernel for a free loopback port. The port is free when freePort returns;
// another process may take it before sshd binds it, which runSSHD reports as errAddrInUse.
func freePort(ctx context.Context, addr string) (int, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// runSSHD starts sshd with the server's config and waits until it has written its pid file
// and answers on port with the server's host key. sshd daemonises itself; the returned pid
// is the daemon's, read from its pid file.
func runSSHD(ctx context.Context, sshdPath string, f Files, listen string, port int, hostPub ssh.PublicKey) (int, error) {
	cmd := exec.Command(sshdPath, "-f", f.Config, "-E", f.Log)
	cmd.Dir = "/"
	// A minimal environment: the daemon must not inherit the service's or the engine's
	// variables (passphrases, tokens). Sessions get their environment from sshd itself.
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if err := cmd.Run(); err != nil {
		return 0, sshdFailure(fmt.Errorf("run %s: %w", sshdPath, err), f.Log)
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	addr := net.JoinHostPort(listen, strconv.Itoa(port))
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	pid := 0
	for {
		if pid == 0 {
			if p, err := readPIDFile(f.PIDFile); err == nil && CmdlineNamesConfig(p, f.Config) {
				pid = p
			}
		} else if ProcessGone(pid) {
			return pid, sshdFailure(errors.New("sshd exited"), f.Log)
		}
		if pid != 0 {
			err := probeSSH(ctx, addr, hostPub)
			if err == nil {
				return pid, nil
			}
			if errors.Is(err, errHostKeyMismatch) {
				return pid, fmt.Errorf("probe %s: %w", addr, err)
			}
		}
		select {
		case <-ctx.Done():
			return pid, sshdFailure(fmt.Errorf("wait for sshd on %s: %w", addr, ctx.Err()), f.Log)
		case <-tick.C:
		}
	}
}

// sshdFailure adds the tail of sshd's log to err, and errAddrInUse when the log says so.
func sshdFailure(err error, logFile string) error {
	data, readErr := os.ReadFile(logFile)
	if readErr != nil || len(bytes.TrimSpace(data)) == 0 {
		return err
	}
	text := strings.TrimSpace(string(data))
	if len(text) > 2000 {
		text = text[len(text)-2000:]
	}
	if strings.Contains(text, "Address already in use") {
		err = fmt.Errorf("%w: %w", err, errAddrInUse)
	}
	return fmt.Errorf("%w; sshd log: %s", err, text)
}

var errHostKeyMismatch = errors.New("sshd presented another host key")

// probeSSH completes an SSH key exchange with addr and checks the host key. It does not
// log in: reaching authentication with the right host key proves the server's sshd answers.
func probeSSH(ctx context.Context, addr string, hostPub ssh.PublicKey) error {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if deadline, ok := dctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	matched := false
	fixed := ssh.FixedHostKey(hostPub)
	cfg := &ssh.ClientConfig{
		User: "probe",
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			if err := fixed(hostname, remote, key); err != nil {
				return errHostKeyMismatch
			}
			matched = true
			return nil
		},
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err == nil {
		// No auth method was offered, so this cannot log in; close it all the same.
		go ssh.DiscardRequests(reqs)
		go func() {
			for ch := range chans {
				_ = ch.Reject(ssh.Prohibited, "probe")
			}
		}()
		c.Close()
	}
	if matched {
		return nil
	}
	if errors.Is(err, errHostKeyMismatch) {
		return errHostKeyMismatch
	}
	if err == nil {
		err = errors.New("no key exchange")
	}
	return err
}

func readPIDFile(name string) (int, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file %s: bad pid %q", name, strings.TrimSpace(string(data)))
	}
	return pid, nil
}

// cmdlineNamesConfig reports whether process pid is an sshd started with "-f config".
// sshd rewrites its argv into one space-separated title ("sshd: /usr/sbin/sshd -f <config>
// -E <log> [listener]"), so both NUL- and space-separated forms are accepted.
func CmdlineNamesConfig(pid int, config string) bool {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || ProcessGone(pid) {
		return false
	}
	line := " " + strings.ReplaceAll(string(data), "\x00", " ") + " "
	return strings.Contains(line, " -f "+config+" ")
}

// processGone reports whether pid no longer runs: no such process, or a zombie waiting for
// a parent that may never reap it.
func ProcessGone(pid int) bool {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	// The state follows the command name, which is wrapped in parentheses and may hold any byte.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return true
	}
	switch data[i+2] {
	case 'Z', 'X', 'x':
		return true
	}
	return false
}

// PID returns the pid of the server's running sshd, if any (see serverPIDs).
func PID(f Files, statePID int) (int, bool) {
	pids := serverPIDs(f, statePID)
	if len(pids) == 0 {
		return 0, false
	}
	return pids[0], true
}

// serverPIDs lists the running sshd processes of the server: the one in its pid file, the one
// recorded in state, and any other whose command line names the server's config file (an
// sshd that daemonised but had not written its pid file yet). The config path is unique to
// the server, so nothing else matches; processes are never picked by name.
func serverPIDs(f Files, statePID int) []int {
	var pids []int
	add := func(pid int) {
		if pid > 1 && !slices.Contains(pids, pid) && CmdlineNamesConfig(pid, f.Config) {
			pids = append(pids, pid)
		}
	}
	add(pidFromFile(f.PIDFile))
	add(statePID)
	if entries, err := os.ReadDir("/proc"); err == nil {
		for _, e := range entries {
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				add(pid)
			}
		}
	}
	return pids
}

func pidFromFile(name string) int {
	pid, err := readPIDFile(name)
	if err != nil {
		return 0
	}
	return pid
}

// Stop stops the server's sshd processes (see PID): SIGTERM, then SIGKILL after a grace
// period. Stopping a server that does not run succeeds.
func Stop(ctx context.Context, f Files, statePID int) error {
	pids := serverPIDs(f, statePID)
	if len(pids) == 0 {
		return nil
	}
	if err := terminate(ctx, pids); err != nil {
		return fmt.Errorf("stop sshd: %w", err)
	}
	return nil
}

// terminate sends SIGTERM to pids, waits up to stopGrace for them to end, then sends
// SIGKILL to those left and waits for them too.
func terminate(ctx context.Context, pids []int) error {
	signalAll := func(sig syscall.Signal) {
		for _, pid := range pids {
			if !ProcessGone(pid) {
				_ = syscall.Kill(pid, sig)
			}
		}
	}
	allGone := func() bool {
		for _, pid := range pids {
			if !ProcessGone(pid) {
				return false
			}
		}
		return true
	}
	waitGone := func(d time.Duration) bool {
		deadline := time.Now().Add(d)
		for {
			if allGone() {
				return true
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return allGone()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	signalAll(syscall.SIGTERM)
	if waitGone(stopGrace) {
		return nil
	}
	signalAll(syscall.SIGKILL)
	if waitGone(2 * time.Second) {
		return nil
	}
	var left []string
	for _, pid := range pids {
		if !ProcessGone(pid) {
			left = append(left, strconv.Itoa(pid))
		}
	}
	return fmt.Errorf("processes %s still run after SIGKILL", strings.Join(left, ","))
}

// taggedProcesses lists the processes whose environment holds exactly the entry tag.
func taggedProcesses(tag string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	want := []byte(tag)
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue // gone, or a kernel thread
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Equal(kv, want) {
				if !ProcessGone(pid) {
					pids = append(pids, pid)
				}
				break
			}
		}
	}
	return pids, nil
}

// killTagged terminates every process that carries tag in its environment. It scans again
// after each round, since a dying session may have started children meanwhile.
func KillTagged(ctx context.Context, tag string) error {
	for round := 0; round < 3; round++ {
		pids, err := taggedProcesses(tag)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if err := terminate(ctx, pids); err != nil {
			return fmt.Errorf("end session processes: %w", err)
		}
	}
	pids, err := taggedProcesses(tag)
	if err != nil {
		return err
	}
	if len(pids) > 0 {
		return fmt.Errorf("end session processes: %d still start anew", len(pids))
	}
	return nil
}

// detectGPU names the host's GPUs as nvidia-smi reports them, or "none" when there is no
// NVIDIA driver. A local worker runs on this host, so these are the job's GPUs.
func DetectGPU(ctx context.Context) string {
	bin, err := exec.LookPath("nvidia-smi")
	if err != nil {
		return "none"
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--query-gpu=name", "--format=csv,noheader").Output()
	if err != nil {
		return "none"
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			names = append(names, line)
		}
	}
	switch {
	case len(names) == 0:
		return "none"
	case len(names) == 1:
		return names[0]
	}
	return fmt.Sprintf("%dx %s", len(names), names[0])
}

// checkSafePath reports an error when sshd's StrictModes would refuse files under dir: sshd
// walks from the authorized_keys file up to the user's home directory (or /) and rejects any
// directory that is not owned by root or the user, or is group- or world-writable.
func CheckSafePath(dir string) error {
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return err
	}
	uid := os.Getuid()
	home := ""
	if u, err := user.Current(); err == nil {
		home = filepath.Clean(u.HomeDir)
	}
	for p := resolved; ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if ok && sys.Uid != 0 && int(sys.Uid) != uid {
			return fmt.Errorf("directory %s is owned by another user; sshd StrictModes would refuse the server's files", p)
		}
		if st.Mode().Perm()&0o022 != 0 {
			return fmt.Errorf("directory %s is group- or world-writable; sshd StrictModes would refuse the server's files", p)
		}
		if p == home || p == "/" || p == "." {
			return nil
		}
	}
}

// ScanHostKey completes an SSH key exchange with addr and returns the ed25519 host key it
// presents, without logging in. It is how a machine whose host key could not be installed
// at boot gets its key pinned on first use.
func ScanHostKey(ctx context.Context, addr string) (ssh.PublicKey, error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if deadline, ok := dctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	var seen ssh.PublicKey
	cfg := &ssh.ClientConfig{
		User:              "probe",
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519},
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			seen = key
			return nil
		},
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err == nil {
		go ssh.DiscardRequests(reqs)
		go func() {
			for ch := range chans {
				_ = ch.Reject(ssh.Prohibited, "probe")
			}
		}()
		c.Close()
	}
	if seen == nil {
		if err == nil {
			err = errors.New("no key exchange")
		}
		return nil, fmt.Errorf("scan host key of %s: %w", addr, err)
	}
	return seen, nil
}
