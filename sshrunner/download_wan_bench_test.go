package sshrunner_test

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

// The emulated long path: 20 ms each way (40 ms round trip) and 1 Gbit/s each way, a
// cloud-to-cloud link between regions. Over it one SSH channel's 2 MiB window (OpenSSH's
// and x/crypto/ssh's) allows at most about 2 MiB per round trip, ~52 MB/s.
const (
	wanDelay = 20 * time.Millisecond
	wanRate  = "1gbit"
	// wanRateBytes is wanRate for the delay line of UNDERSTUDY_WAN_DELAY=tun (tc's gbit is
	// 10^9 bits per second).
	wanRateBytes = 1e9 / 8
	// wanNamePrefix names this benchmark's network namespaces: wanNamePrefix + the
	// benchmark process's id, so that a run can tell its own from a crashed run's.
	wanNamePrefix = "usbench-"
)

// wanFiles is benchFiles at half size (512 MiB): the same shape, shorter runs at WAN speed.
var wanFiles = func() []benchFile {
	out := make([]benchFile, len(benchFiles))
	for i, f := range benchFiles {
		out[i] = benchFile{f.name, f.size / 2}
	}
	return out
}()

// BenchmarkDownloadWAN pulls 512 MiB of model-like files over an emulated long path: an
// sshd inside a network namespace, reached through a veth pair whose both ends delay every
// packet by 20 ms and limit it to 1 Gbit/s with tc netem. There, parallel SFTP sessions
// (each its own flow-control window) should beat OpenSSH's single channel. Goal: Download,
// verification kept, at least 1.5x scp raw. Needs root (ip netns, tc) and a kernel with
// sch_netem; it fails, never skips, where either is missing.
//
// For kernels without netem, two user-space emulations:
//   - UNDERSTUDY_WAN_DELAY=tun: the namespace is joined by two TUN devices instead of the veth
//     pair, and a delay line in this process moves every IP packet between them after the
//     time it would take on the link (1 Gbit/s, then 20 ms, each way; wanlink_bench_test.go).
//     Connections stay end to end, so TCP sees the round trip as it does with netem.
//   - UNDERSTUDY_WAN_DELAY=proxy: the rate limit stays in the kernel (tc tbf on the veth
//     pair) and a TCP relay in this process holds every byte 20 ms in each direction. That
//     relay terminates TCP, so TCP's own congestion window never sees the delay, only the
//     SSH and SFTP windows do: its figures are indicative only.
func BenchmarkDownloadWAN(b *testing.B) {
	delay := os.Getenv("UNDERSTUDY_WAN_DELAY")
	switch delay {
	case "", "netem":
		delay = "netem"
	case "proxy", "tun":
	default:
		b.Fatalf("UNDERSTUDY_WAN_DELAY=%q: want netem (default), tun or proxy", delay)
	}
	if os.Geteuid() != 0 {
		b.Fatal("BenchmarkDownloadWAN needs root: it creates a network namespace and tc qdiscs")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := lookTool(tool); err != nil {
			b.Fatalf("%s is required (Debian: apt-get install iproute2; make deps installs it): %v", tool, err)
		}
	}
	n := newWANNet(b, delay == "tun")
	switch delay {
	case "netem":
		netem := []string{"netem", "delay", wanDelay.String(), "rate", wanRate, "limit", "100000"}
		if err := n.qdisc(b, netem...); err != nil {
			b.Fatalf("tc netem is not available on this kernel (CONFIG_NET_SCH_NETEM), so the WAN case "+
				"cannot be emulated in the kernel: %v\nUNDERSTUDY_WAN_DELAY=proxy emulates the delay in user space "+
				"instead (indicative figures, see the benchmark's doc comment)", err)
		}
	case "proxy":
		// tbf: the rate in the kernel; the relay below adds the delay.
		if err := n.qdisc(b, "tbf", "rate", wanRate, "burst", "512kb", "latency", "100ms"); err != nil {
			b.Fatalf("tc tbf: %v", err)
		}
	}
	srv := startNamespacedSSHD(b, n)
	if delay == "proxy" {
		relay := startDelayProxy(b, net.JoinHostPort(n.nsIP, "22"), wanDelay)
		srv = srv.via(b, "127.0.0.1", relay.port())
	}

	src := filepath.Join(b.TempDir(), "out")
	want, total := writeBenchFiles(b, src, wanFiles)
	methods := []benchMethod{
		downloadMethod("sshrunner", srv, src, want, nil),
		// One connection carrying the sessions, and one session: what earlier defaults chose.
		downloadMethod("sshrunner-1conn", srv, src, want, &sshrunner.DownloadOptions{Connections: 1}),
		downloadMethod("sshrunner-1sess", srv, src, want, &sshrunner.DownloadOptions{Sessions: 1, Connections: 1}),
		scpMethod(srv, src),
		scpSHA256Method(srv, src, want),
	}
	b.ResetTimer()
	var res []benchResult
	for range b.N {
		res = runBenchRounds(b, methods, benchRounds, src, want)
	}
	b.StopTimer()
	title := fmt.Sprintf("WAN (%s each way, %s, delay by %s)", wanDelay, wanRate, delay)
	reportDownload(b, title, methods, res, len(want), total)
}

func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH, /usr/sbin or /sbin", name)
}

// wanNet is a network namespace joined to this one by a veth pair, or by two TUN devices
// and a delay line.
type wanNet struct {
	ns       string // namespace name
	hostLink string // veth end in this namespace
	nsLink   string // veth end inside ns
	hostIP   string
	nsIP     string
}

func runTool(b *testing.B, name string, args ...string) error {
	b.Helper()
	path, err := lookTool(name)
	if err != nil {
		return err
	}
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// newWANNet creates the namespace and veth pair (with tun, the TUN devices and their delay
// line instead), named after this process, and removes them
// (and every process left in the namespace) when b ends, whatever the outcome. It first
// removes what a crashed earlier run of this benchmark left.
func newWANNet(b *testing.B, tun bool) *wanNet {
	removeStaleNamespaces(b)
	pid := os.Getpid()
	n := &wanNet{
		ns:       wanNamePrefix + strconv.Itoa(pid),
		hostLink: fmt.Sprintf("usb%dh", pid),
		nsLink:   fmt.Sprintf("usb%dn", pid),
		hostIP:   fmt.Sprintf("10.213.%d.1", pid%256),
		nsIP:     fmt.Sprintf("10.213.%d.2", pid%256),
	}
	// Registered before anything is created, so that a failure half-way still cleans up.
	b.Cleanup(func() { removeNamespace(b, n.ns, n.hostLink) })
	setUp := func(steps ...[]string) {
		for _, s := range steps {
			if err := runTool(b, "ip", s...); err != nil {
				b.Fatalf("set up the WAN namespace: %v", err)
			}
		}
	}
	setUp([]string{"netns", "add", n.ns})
	if tun {
		// Two TUN devices and this process's delay line instead of the veth pair: created
		// here, the namespace's end then moved into it, each end addressed point to point.
		startTUNLink(b, n.hostLink, n.nsLink, wanRateBytes, wanDelay)
		mtu, qlen := strconv.Itoa(tunMTU), strconv.Itoa(tunQueueLimit)
		setUp(
			[]string{"link", "set", n.nsLink, "netns", n.ns},
			[]string{"addr", "add", n.hostIP, "peer", n.nsIP, "dev", n.hostLink},
			[]string{"link", "set", n.hostLink, "mtu", mtu, "txqueuelen", qlen, "up"},
			[]string{"-n", n.ns, "addr", "add", n.nsIP, "peer", n.hostIP, "dev", n.nsLink},
			[]string{"-n", n.ns, "link", "set", n.nsLink, "mtu", mtu, "txqueuelen", qlen, "up"},
		)
	} else {
		setUp(
			[]string{"link", "add", n.hostLink, "type", "veth", "peer", "name", n.nsLink},
			[]string{"link", "set", n.nsLink, "netns", n.ns},
			[]string{"addr", "add", n.hostIP + "/30", "dev", n.hostLink},
			[]string{"link", "set", n.hostLink, "up"},
			[]string{"-n", n.ns, "addr", "add", n.nsIP + "/30", "dev", n.nsLink},
			[]string{"-n", n.ns, "link", "set", n.nsLink, "up"},
		)
	}
	setUp([]string{"-n", n.ns, "link", "set", "lo", "up"})
	return n
}

// qdisc puts the same root qdisc on both ends of the veth pair, so that each direction is
// shaped once.
func (n *wanNet) qdisc(b *testing.B, spec ...string) error {
	if err := runTool(b, "tc", append([]string{"qdisc", "add", "dev", n.hostLink, "root"}, spec...)...); err != nil {
		return err
	}
	return runTool(b, "ip", append([]string{"netns", "exec", n.ns, "tc", "qdisc", "add", "dev", n.nsLink, "root"}, spec...)...)
}

// removeNamespace ends every process in the namespace (by id, as `ip netns pids` lists
// them), then deletes the namespace, which takes its veth end and so the pair with it.
func removeNamespace(b *testing.B, ns, hostLink string) {
	for range 3 {
		path, err := lookTool("ip")
		if err != nil {
			b.Errorf("remove namespace %s: %v", ns, err)
			return
		}
		out, err := exec.Command(path, "netns", "pids", ns).Output()
		if err != nil {
			break // no such namespace (any more)
		}
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			if id, err := strconv.Atoi(p); err == nil && id > 1 {
				_ = syscall.Kill(id, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := runTool(b, "ip", "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
		b.Errorf("remove namespace %s: %v", ns, err)
	}
	if hostLink != "" {
		if _, err := net.InterfaceByName(hostLink); err == nil {
			if err := runTool(b, "ip", "link", "del", hostLink); err != nil {
				b.Errorf("remove veth %s: %v", hostLink, err)
			}
		}
	}
}

// removeStaleNamespaces removes this benchmark's namespaces whose process is gone.
func removeStaleNamespaces(b *testing.B) {
	path, err := lookTool("ip")
	if err != nil {
		return
	}
	out, err := exec.Command(path, "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, wanNamePrefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(rest)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			b.Logf("removing namespace %s left by an earlier run", name)
			removeNamespace(b, name, fmt.Sprintf("usb%dh", pid))
		}
	}
}

// startNamespacedSSHD runs OpenSSH's sshd inside n's namespace, listening on n.nsIP:22 with
// the local worker's configuration (internal-sftp), and stops it when b ends.
func startNamespacedSSHD(b *testing.B, n *wanNet) benchServer {
	u, err := user.Current()
	if err != nil {
		b.Fatal(err)
	}
	// sshd running as root insists on its privilege separation directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	_, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	_, clientPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	clientKey := filepath.Join(dir, "client_ed25519_key")
	writeKey(b, hostKey, hostPriv)
	writeKey(b, clientKey, clientPriv)
	hostSigner, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		b.Fatal(err)
	}
	clientSigner, err := ssh.NewSignerFromKey(clientPriv)
	if err != nil {
		b.Fatal(err)
	}
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, ssh.MarshalAuthorizedKey(clientSigner.PublicKey()), 0o600); err != nil {
		b.Fatal(err)
	}
	config := filepath.Join(dir, "sshd_config")
	cfg := fmt.Sprintf(`Port 22
ListenAddress %s
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
`, n.nsIP, hostKey, authorized, filepath.Join(dir, "sshd.pid"))
	if err := os.WriteFile(config, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	ipPath, err := lookTool("ip")
	if err != nil {
		b.Fatal(err)
	}
	logPath := filepath.Join(dir, "sshd.log")
	// `ip netns exec` execs sshd in place: the process id is sshd's.
	cmd := exec.Command(ipPath, "netns", "exec", n.ns, "/usr/sbin/sshd", "-D", "-f", config, "-E", logPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start sshd in %s: %v", n.ns, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	pid := cmd.Process.Pid
	b.Cleanup(func() {
		// Its per-connection children first, then the listener, each by id.
		for _, child := range children(pid) {
			_ = syscall.Kill(child, syscall.SIGKILL)
		}
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-exited
		}
	})
	addr := net.JoinHostPort(n.nsIP, "22")
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			b.Fatalf("sshd in %s exited: %s", n.ns, log)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("sshd in %s does not answer on %s: %v", n.ns, addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	s := benchServer{target: sshrunner.Target{
		Host: n.nsIP, Port: 22, User: u.Username, Signer: clientSigner,
		HostKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostSigner.PublicKey()))),
	}}
	s.sshArgs = []string{"-F", "/dev/null", "-i", clientKey, "-o", "IdentitiesOnly=yes",
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
		"-o", "LogLevel=ERROR"}
	return s.via(b, n.nsIP, 22)
}

// via returns s reached at host:port, with a known_hosts file that pins its host key there.
func (s benchServer) via(b *testing.B, host string, port int) benchServer {
	key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s.target.HostKey))
	if err != nil {
		b.Fatal(err)
	}
	known := filepath.Join(b.TempDir(), "known_hosts")
	line := knownhosts.Line([]string{knownhosts.Normalize(net.JoinHostPort(host, strconv.Itoa(port)))}, key)
	if err := os.WriteFile(known, []byte(line+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	s.target.Host, s.target.Port = host, port
	var args []string
	for i := 0; i < len(s.sshArgs); i++ {
		if s.sshArgs[i] == "-o" && i+1 < len(s.sshArgs) && strings.HasPrefix(s.sshArgs[i+1], "UserKnownHostsFile=") {
			i++
			continue
		}
		args = append(args, s.sshArgs[i])
	}
	s.sshArgs = append(args, "-o", "UserKnownHostsFile="+known)
	return s
}

func writeKey(b *testing.B, path string, key ed25519.PrivateKey) {
	block, err := ssh.MarshalPrivateKey(key, "bench")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		b.Fatal(err)
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
		if parentOf(id) == pid {
			ids = append(ids, id)
		}
	}
	return ids
}
