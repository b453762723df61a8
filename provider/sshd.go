package provider

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

// errAddrInUse reports that sshd could not bind its port because another process holds it.
var errAddrInUse = errors.New("address already in use")

// freePort asks the kernel for a free loopback port. The port is free when freePort returns;
// another process may take it before sshd binds it, which runSSHD reports as errAddrInUse.
func freePort(ctx context.Context) (int, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// runSSHD starts sshd with the worker's config and waits until it has written its pid file
// and answers on port with the worker's host key. sshd daemonises itself; the returned pid
// is the daemon's, read from its pid file.
func runSSHD(ctx context.Context, sshdPath string, f workerFiles, port int, hostPub ssh.PublicKey) (int, error) {
	cmd := exec.Command(sshdPath, "-f", f.config, "-E", f.log)
	cmd.Dir = "/"
	// A minimal environment: the daemon must not inherit the service's or the engine's
	// variables (passphrases, tokens). Sessions get their environment from sshd itself.
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if err := cmd.Run(); err != nil {
		return 0, sshdFailure(fmt.Errorf("run %s: %w", sshdPath, err), f.log)
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	pid := 0
	for {
		if pid == 0 {
			if p, err := readPIDFile(f.pidFile); err == nil && cmdlineNamesConfig(p, f.config) {
				pid = p
			}
		} else if processGone(pid) {
			return pid, sshdFailure(errors.New("sshd exited"), f.log)
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
			return pid, sshdFailure(fmt.Errorf("wait for sshd on %s: %w", addr, ctx.Err()), f.log)
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
// log in: reaching authentication with the right host key proves the worker's sshd answers.
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
func cmdlineNamesConfig(pid int, config string) bool {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || processGone(pid) {
		return false
	}
	line := " " + strings.ReplaceAll(string(data), "\x00", " ") + " "
	return strings.Contains(line, " -f "+config+" ")
}

// processGone reports whether pid no longer runs: no such process, or a zombie waiting for
// a parent that may never reap it.
func processGone(pid int) bool {
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

// workerSSHDPID returns the pid of the worker's running sshd, if any (see workerSSHDPIDs).
func workerSSHDPID(f workerFiles, statePID int) (int, bool) {
	pids := workerSSHDPIDs(f, statePID)
	if len(pids) == 0 {
		return 0, false
	}
	return pids[0], true
}

// workerSSHDPIDs lists the running sshd processes of the worker: the one in its pid file,
// the one recorded in state, and any other whose command line names the worker's config
// file (an sshd that daemonised but had not written its pid file yet). The config path is unique to the worker, so nothing else
// matches; processes are never picked by name.
func workerSSHDPIDs(f workerFiles, statePID int) []int {
	var pids []int
	add := func(pid int) {
		if pid > 1 && !slices.Contains(pids, pid) && cmdlineNamesConfig(pid, f.config) {
			pids = append(pids, pid)
		}
	}
	add(pidFromFile(f.pidFile))
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

// stopSSHD stops the sshd named by the worker's pid file, if it runs.
func stopSSHD(ctx context.Context, f workerFiles) error { return stopSSHDWithFallback(ctx, f, 0) }

// stopSSHDWithFallback stops the worker's sshd processes: SIGTERM, then SIGKILL after
// stopGrace.
func stopSSHDWithFallback(ctx context.Context, f workerFiles, statePID int) error {
	pids := workerSSHDPIDs(f, statePID)
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
			if !processGone(pid) {
				_ = syscall.Kill(pid, sig)
			}
		}
	}
	allGone := func() bool {
		for _, pid := range pids {
			if !processGone(pid) {
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
		if !processGone(pid) {
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
				if !processGone(pid) {
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
func killTagged(ctx context.Context, tag string) error {
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
func detectGPU(ctx context.Context) string {
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
func checkSafePath(dir string) error {
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
			return fmt.Errorf("directory %s is owned by another user; sshd StrictModes would refuse the worker", p)
		}
		if st.Mode().Perm()&0o022 != 0 {
			return fmt.Errorf("directory %s is group- or world-writable; sshd StrictModes would refuse the worker", p)
		}
		if p == home || p == "/" || p == "." {
			return nil
		}
	}
}
