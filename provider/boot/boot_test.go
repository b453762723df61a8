package boot

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"
)

func hostKey(t *testing.T) (string, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := ssh.NewPublicKey(priv.Public())
	return string(pem.EncodeToMemory(block)), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
}

// startWork starts a process group that stands for the job's run and records its leader in
// dir/pid, as the service's runner does. It returns a channel closed when it has ended.
func startWork(t *testing.T, dir string) (int, <-chan struct{}) {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	t.Cleanup(func() {
		if cmd.Process != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	if err := os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid, done
}

// runWatchdog starts watchdog.sh with action exit; the returned channel yields its error.
func runWatchdog(t *testing.T, env ...string) <-chan error {
	t.Helper()
	script := filepath.Join(t.TempDir(), "watchdog.sh")
	if err := os.WriteFile(script, []byte(Watchdog()), 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", script, "exit")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "UNDERSTUDY_WATCHDOG_INTERVAL=1", "UNDERSTUDY_STOP_GRACE=2"}, env...)
	t.Cleanup(func() {
		if cmd.Process != nil {
			_ = cmd.Process.Kill()
		}
	})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- cmd.Wait() }()
	return errc
}

func TestWatchdogStopsWorkWhenLeaseExpires(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, workDone := startWork(t, dir)
	lease := filepath.Join(dir, "lease")
	// The service renews the lease for a while: the watchdog must leave the work alone.
	stopRenewing := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopRenewing:
				return
			case <-time.After(300 * time.Millisecond):
				now := time.Now()
				if f, err := os.Create(lease); err == nil {
					f.Close()
				}
				_ = os.Chtimes(lease, now, now)
			}
		}
	}()
	errc := runWatchdog(t, EnvLeaseFile+"="+lease, EnvLeaseSeconds+"=3", EnvDeadline+"=0")
	select {
	case err := <-errc:
		t.Fatalf("watchdog ended while the lease was renewed: %v", err)
	case <-workDone:
		t.Fatal("the work ended while the lease was renewed")
	case <-time.After(5 * time.Second):
	}
	close(stopRenewing)
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("watchdog: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("watchdog did not act on an expired lease")
	}
	select {
	case <-workDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the work's process group still runs after the watchdog acted")
	}
	log, _ := os.ReadFile(filepath.Join(dir, "watchdog.log"))
	if !strings.Contains(string(log), "lease expired") {
		t.Errorf("watchdog.log does not name the reason:\n%s", log)
	}
}

func TestWatchdogLeaseCountsFromStartWithoutFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, workDone := startWork(t, dir)
	errc := runWatchdog(t, EnvLeaseFile+"="+filepath.Join(dir, "lease"), EnvLeaseSeconds+"=2", EnvDeadline+"=0")
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("watchdog did not act when the lease was never renewed")
	}
	<-workDone
}

func TestWatchdogDeadline(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, workDone := startWork(t, dir)
	deadline := time.Now().Add(2 * time.Second).Unix()
	errc := runWatchdog(t, EnvLeaseFile+"="+filepath.Join(dir, "lease"), EnvLeaseSeconds+"=0",
		EnvDeadline+"="+strconv.FormatInt(deadline, 10))
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("watchdog did not act at the deadline")
	}
	<-workDone
	log, _ := os.ReadFile(filepath.Join(dir, "watchdog.log"))
	if !strings.Contains(string(log), "deadline reached") {
		t.Errorf("watchdog.log does not name the deadline:\n%s", log)
	}
}

func TestScriptsParse(t *testing.T) {
	t.Parallel()
	for name, script := range map[string]string{"watchdog.sh": Watchdog(), "runpod-start.sh": RunPodStartScript()} {
		cmd := exec.Command("bash", "-n")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", name, err, out)
		}
	}
}

func TestRunPodStart(t *testing.T) {
	t.Parallel()
	priv, _ := hostKey(t)
	env, args := RunPodStart(Machine{HostPrivateKey: priv, AuthorizedKeys: []string{"ssh-ed25519 AAAA job", "", "ssh-ed25519 BBBB operator"},
		Lease: Lease{File: "/workspace/understudy/tr-1/lease", Seconds: 900, Deadline: 1700000000}})
	if env[EnvPublicKey] != "ssh-ed25519 AAAA job\nssh-ed25519 BBBB operator" {
		t.Errorf("PUBLIC_KEY = %q", env[EnvPublicKey])
	}
	raw, err := base64.StdEncoding.DecodeString(env[EnvHostKey])
	if err != nil || strings.TrimSpace(string(raw)) != strings.TrimSpace(priv) {
		t.Errorf("host key does not round-trip (%v)", err)
	}
	for k, want := range map[string]string{EnvLeaseFile: "/workspace/understudy/tr-1/lease", EnvLeaseSeconds: "900", EnvDeadline: "1700000000"} {
		if env[k] != want {
			t.Errorf("%s = %q, want %q", k, env[k], want)
		}
	}
	start, _ := base64.StdEncoding.DecodeString(env[EnvStart])
	if string(start) != RunPodStartScript() {
		t.Error("start script does not round-trip")
	}
	if strings.Contains(args, "PRIVATE") || !strings.Contains(args, "$"+EnvStart) {
		t.Errorf("args = %q", args)
	}
	// The start command itself is valid bash that decodes and runs the script.
	fields := strings.SplitN(args, " ", 3)
	if len(fields) != 3 || fields[0] != "bash" || fields[1] != "-c" {
		t.Fatalf("args = %q, want bash -c '…'", args)
	}
	inner := strings.Trim(fields[2], "'")
	cmd := exec.Command("bash", "-n", "-c", inner)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("start command: %v\n%s", err, out)
	}

	// Without a host key the image keeps its own (trust on first use).
	env, _ = RunPodStart(Machine{AuthorizedKeys: []string{"ssh-ed25519 AAAA job"}})
	if _, ok := env[EnvHostKey]; ok {
		t.Error("host key env set without a host key")
	}
}

func TestLambdaUserData(t *testing.T) {
	t.Parallel()
	priv, pub := hostKey(t)
	ud, err := LambdaUserData(Machine{HostPrivateKey: priv, AuthorizedKeys: []string{"ssh-ed25519 BBBB operator"},
		Lease: Lease{File: "/home/ubuntu/understudy/tr-1/lease", Seconds: 600, Deadline: 0}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ud, "#cloud-config\n") {
		t.Fatalf("user data does not start with #cloud-config:\n%s", ud)
	}
	var cc struct {
		SSHKeys           map[string]string `yaml:"ssh_keys"`
		SSHAuthorizedKeys []string          `yaml:"ssh_authorized_keys"`
		WriteFiles        []struct {
			Path, Permissions, Encoding, Content string
		} `yaml:"write_files"`
		RunCmd [][]string `yaml:"runcmd"`
	}
	if err := yaml.Unmarshal([]byte(ud), &cc); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(cc.SSHKeys["ed25519_private"]) != strings.TrimSpace(priv) || cc.SSHKeys["ed25519_public"] != pub {
		t.Error("ssh_keys does not carry the host key pair")
	}
	if len(cc.SSHAuthorizedKeys) != 1 || cc.SSHAuthorizedKeys[0] != "ssh-ed25519 BBBB operator" {
		t.Errorf("ssh_authorized_keys = %v", cc.SSHAuthorizedKeys)
	}
	files := map[string]string{}
	for _, f := range cc.WriteFiles {
		c := f.Content
		if f.Encoding == "b64" {
			b, err := base64.StdEncoding.DecodeString(c)
			if err != nil {
				t.Fatal(err)
			}
			c = string(b)
		}
		files[f.Path] = c
	}
	if want := "UNDERSTUDY_LEASE_FILE=/home/ubuntu/understudy/tr-1/lease\nUNDERSTUDY_LEASE_SECONDS=600\nUNDERSTUDY_DEADLINE=0\n"; files[LeaseEnvPath] != want {
		t.Errorf("lease.env = %q, want %q", files[LeaseEnvPath], want)
	}
	if files[WatchdogPath] != Watchdog() {
		t.Error("watchdog not written")
	}
	if len(cc.RunCmd) != 1 || cc.RunCmd[0][0] != "systemd-run" || cc.RunCmd[0][len(cc.RunCmd[0])-1] != "poweroff" {
		t.Errorf("runcmd = %v", cc.RunCmd)
	}
}

func TestCloudInitIsLambdaUserData(t *testing.T) {
	t.Parallel()
	priv, _ := hostKey(t)
	m := Machine{HostPrivateKey: priv, AuthorizedKeys: []string{"ssh-ed25519 AAAA job"},
		Lease: Lease{File: "/home/ubuntu/understudy/tr-1/lease", Seconds: 900, Deadline: 1700000000}}
	ci, err := CloudInit(m)
	if err != nil {
		t.Fatal(err)
	}
	ud, err := LambdaUserData(m)
	if err != nil || ud != ci {
		t.Errorf("LambdaUserData differs from CloudInit (%v)", err)
	}
	var cc map[string]any
	if err := yaml.Unmarshal([]byte(ci), &cc); err != nil {
		t.Fatal(err)
	}
	if cc["ssh_deletekeys"] != true {
		t.Error("ssh_deletekeys is not true: the image's own host keys would stay")
	}
	if _, err := CloudInit(Machine{HostPrivateKey: "not a key"}); err == nil || strings.Contains(err.Error(), "not a key") {
		t.Errorf("CloudInit of a bad key: %v", err)
	}
	// Without a host key the image keeps its own.
	ci, err = CloudInit(Machine{Lease: Lease{File: "/w/lease"}})
	if err != nil || strings.Contains(ci, "ssh_keys") {
		t.Errorf("CloudInit without a host key: %v\n%s", err, ci)
	}
}

// runStartupScript runs script with its absolute paths moved under a fresh root and the
// system commands it calls replaced by stubs that log their arguments; it returns the root
// and the log.
func runStartupScript(t *testing.T, script string, root string) string {
	t.Helper()
	bin := filepath.Join(root, "bin")
	log := filepath.Join(root, "commands.log")
	for _, dir := range []string{bin, filepath.Join(root, "usr/local/sbin"), filepath.Join(root, "etc/ssh/sshd_config.d")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"systemctl", "systemd-run", "chown"} {
		stub := "#!/bin/sh\necho " + name + " \"$@\" >>" + log + "\n"
		if err := os.WriteFile(filepath.Join(bin, name), []byte(stub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	moved := strings.NewReplacer("/etc/", root+"/etc/", "/usr/local/sbin/", root+"/usr/local/sbin/").Replace(script)
	cmd := exec.Command("bash", "-c", moved)
	cmd.Env = []string{"PATH=" + bin + ":" + os.Getenv("PATH")}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("startup script: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(log)
	return string(b)
}

func TestStartupScript(t *testing.T) {
	t.Parallel()
	priv, pub := hostKey(t)
	script, err := StartupScript(Machine{HostPrivateKey: priv,
		Lease: Lease{File: "/home/understudy/understudy/tr-1/lease", Seconds: 600, Deadline: 1700000000}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(script, "#!/bin/bash\n") {
		t.Errorf("script does not start with a bash shebang")
	}
	cmd := exec.Command("bash", "-n")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	if strings.Contains(script, "PRIVATE KEY") {
		t.Error("the script carries the key as PEM text; want base64, which no quoting can break")
	}

	root := t.TempDir()
	var log string
	for i := 0; i < 2; i++ { // a reboot runs it again
		log = runStartupScript(t, script, root)
	}
	key := filepath.Join(root, "etc/ssh/ssh_host_ed25519_key")
	for path, want := range map[string]struct {
		content string
		mode    os.FileMode
	}{
		key:                                {strings.TrimSpace(priv) + "\n", 0o600},
		key + ".pub":                       {pub + "\n", 0o644},
		filepath.Join(root, LeaseEnvPath):  {"UNDERSTUDY_LEASE_FILE=/home/understudy/understudy/tr-1/lease\nUNDERSTUDY_LEASE_SECONDS=600\nUNDERSTUDY_DEADLINE=1700000000\n", 0o600},
		filepath.Join(root, WatchdogPath):  {Watchdog(), 0o700},
		filepath.Join(root, HostKeyDropIn): {"HostKey " + key + "\n", 0o644},
	} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if string(b) != want.content {
			t.Errorf("%s = %q, want %q", path, b, want.content)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != want.mode {
			t.Errorf("%s mode %v, want %v", path, fi.Mode().Perm(), want.mode)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(root, "etc/ssh/.understudy-hostkey.*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary key files left: %v", leftovers)
	}
	// Each run: the key is in place before sshd restarts, then the watchdog starts.
	runs := strings.Split(strings.TrimSpace(log), "\n")
	var restart, watchdogStart int
	for i, l := range runs {
		if strings.HasPrefix(l, "systemctl restart ssh") && restart == 0 {
			restart = i + 1
		}
		if strings.HasPrefix(l, "systemd-run --unit=understudy-watchdog") {
			watchdogStart = i + 1
			if !strings.HasSuffix(l, "understudy-watchdog poweroff") || !strings.Contains(l, "EnvironmentFile="+root+LeaseEnvPath) {
				t.Errorf("watchdog started as %q", l)
			}
		}
	}
	if restart == 0 || watchdogStart == 0 || restart > watchdogStart {
		t.Errorf("commands run:\n%s\nwant sshd restarted, then the watchdog started", log)
	}

	// Without a host key the script leaves sshd alone.
	script, err = StartupScript(Machine{Lease: Lease{File: "/w/lease"}})
	if err != nil || strings.Contains(script, "ssh_host") || strings.Contains(script, "restart ssh") {
		t.Errorf("script without a host key touches sshd (%v):\n%s", err, script)
	}
	if _, err := StartupScript(Machine{HostPrivateKey: "junk"}); err == nil {
		t.Error("StartupScript accepted a junk host key")
	}
}
