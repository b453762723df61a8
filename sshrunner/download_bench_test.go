package sshrunner_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gocloud.dev/blob/fileblob"

	"github.com/understudy-ai/training-service/sshrunner"
	"github.com/understudy-ai/training-service/sshrunner/sshdtest"
)

// benchFiles is 1 GiB shaped like a model output directory.
var benchFiles = []benchFile{
	{"model.safetensors", 800 << 20},
	{"optimizer/shard-0.bin", 50 << 20},
	{"optimizer/shard-1.bin", 50 << 20},
	{"optimizer/shard-2.bin", 50 << 20},
	{"optimizer/shard-3.bin", 50 << 20},
	{"tokenizer.json", 24<<20 - 8<<10},
	{"config.json", 4 << 10},
	{"generation_config.json", 4 << 10},
}

type benchFile struct {
	name string
	size int64
}

// benchRounds is how many times each method copies the files: 5, or UNDERSTUDY_BENCH_ROUNDS
// (at least 5) for steadier medians on a noisy machine. Rounds interleave the methods (the
// order rotates each round) and every figure is the median of the rounds, with min and max
// beside it.
var benchRounds = func() int {
	if n, err := strconv.Atoi(os.Getenv("UNDERSTUDY_BENCH_ROUNDS")); err == nil && n > 5 {
		return n
	}
	return 5
}()

// benchCipher is the cipher Dial prefers, and OpenSSH's fastest with AES-NI.
const benchCipher = "aes128-gcm@openssh.com"

// benchServer is what the methods need to reach an sshd.
type benchServer struct {
	target sshrunner.Target
	// sshArgs are the OpenSSH client options: key, pinned host key, batch mode.
	sshArgs []string
}

func loopbackServer(srv *sshdtest.Server) benchServer {
	return benchServer{target: srv.Target(), sshArgs: srv.OpenSSHArgs()}
}

// login is user@host for the OpenSSH clients.
func (s benchServer) login() string { return s.target.User + "@" + s.target.Host }

// benchMethod copies src (remote) into dst (local). It returns the client-side CPU seconds.
// A verified method's copy is known to match the source when run returns.
type benchMethod struct {
	name     string
	verified bool
	run      func(dst string) (cpu float64, err error)
}

// downloadMethod is sshrunner's Download into a fileblob bucket. It checks every file
// against the source's hashes while it copies, as the service does with the runtime's own
// list, and stores nothing that does not match: its copy is verified when it returns.
func downloadMethod(name string, s benchServer, src string, want map[string]string, opts *sshrunner.DownloadOptions) benchMethod {
	o := sshrunner.DownloadOptions{}
	if opts != nil {
		o = *opts
	}
	o.Expected = want
	return benchMethod{name: name, verified: true, run: func(dst string) (float64, error) {
		var ru0, ru1 syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		ctx := context.Background()
		c, err := sshrunner.Dial(ctx, s.target, nil)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		// No sidecar attribute files: like scp, store the bytes only.
		bucket, err := fileblob.OpenBucket(dst, &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
		if err != nil {
			return 0, err
		}
		defer bucket.Close()
		m, err := c.Download(ctx, src, bucket, filepath.Base(src), &o)
		if err != nil {
			return 0, err
		}
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		for _, f := range m.Files {
			if f.SHA256 != want[f.Path] {
				return 0, fmt.Errorf("manifest has sha256 %s for %s, want %s", f.SHA256, f.Path, want[f.Path])
			}
		}
		return cpuSeconds(ru1) - cpuSeconds(ru0), nil
	}}
}

// scpMethod is OpenSSH's scp -r (the SFTP protocol in OpenSSH 9), with no verification.
func scpMethod(s benchServer, src string) benchMethod {
	return benchMethod{name: "scp", run: func(dst string) (float64, error) {
		return runCPU(exec.Command("scp", scpArgs(s, src, dst)...))
	}}
}

func scpArgs(s benchServer, src, dst string) []string {
	a := append(slices.Clone(s.sshArgs), "-c", benchCipher, "-q", "-r", "-P", strconv.Itoa(s.target.Port))
	return append(a, s.login()+":"+src, dst+"/")
}

// scpSHA256Method is scp -r followed by Debian's sha256sum over the copies on every core
// (xargs -P), checked against the source's hashes: what a careful operator runs to vouch
// for weights copied with OpenSSH.
func scpSHA256Method(s benchServer, src string, want map[string]string) benchMethod {
	return benchMethod{name: "scp+sha256sum", verified: true, run: func(dst string) (float64, error) {
		cpu, err := runCPU(exec.Command("scp", scpArgs(s, src, dst)...))
		if err != nil {
			return 0, err
		}
		root := filepath.Join(dst, filepath.Base(src))
		cmd := exec.Command("sh", "-c", `find . -type f -print0 | xargs -0 -n 1 -P "$1" sha256sum`, "sh", strconv.Itoa(runtime.NumCPU()))
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			return 0, fmt.Errorf("sha256sum: %v", err)
		}
		cpu += (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
		return cpu, checkSums(out, want)
	}}
}

// pipeSHA256Method streams each file through `ssh host cat` into tee, which writes it and
// feeds sha256sum: the hash runs alongside the copy, four files at a time (as Download's
// default), each over its own ssh connection.
func pipeSHA256Method(s benchServer, src string, want map[string]string) benchMethod {
	return benchMethod{name: "ssh-cat|tee|sha256sum", verified: true, run: func(dst string) (float64, error) {
		root := filepath.Join(dst, filepath.Base(src))
		ssh := append(slices.Clone(s.sshArgs), "-c", benchCipher, "-p", strconv.Itoa(s.target.Port), s.login())
		var (
			mu    sync.Mutex
			cpu   float64
			sums  []byte
			first error
			wg    sync.WaitGroup
			slots = make(chan struct{}, 4)
		)
		for _, f := range benchFileNames(want) {
			wg.Add(1)
			slots <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				local := filepath.Join(root, filepath.FromSlash(f))
				if err := os.MkdirAll(filepath.Dir(local), 0o755); err != nil {
					mu.Lock()
					first = firstErr(first, err)
					mu.Unlock()
					return
				}
				remote := "cat -- " + shellQuote(filepath.Join(src, filepath.FromSlash(f)))
				script := `set -o pipefail; "$@" | tee -- "$0" | sha256sum`
				// A new slice: every goroutine shares ssh's array, and appending into its spare
				// capacity once let one file's command take another's (a 4 KiB file's bytes
				// stored as a 50 MiB one, failing this peer's own check now and then).
				cmd := exec.Command("bash", slices.Concat([]string{"-c", script, local, "ssh"}, ssh, []string{remote})...)
				out, err := cmd.Output()
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					first = firstErr(first, fmt.Errorf("%s: %v", f, err))
					return
				}
				cpu += (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
				// sha256sum of stdin prints "<hash>  -".
				sums = append(sums, strings.Replace(string(out), " -", " ./"+f, 1)...)
			}()
		}
		wg.Wait()
		if first != nil {
			return 0, first
		}
		if err := checkSums(sums, want); err != nil {
			return 0, fmt.Errorf("%v (%s)", err, describeCopies(root, src, want))
		}
		return cpu, nil
	}}
}

// describeCopies says, for each file whose copy under root differs from the source under
// src, both sizes and the copy's sha256: whether a failed peer lost bytes, or changed them.
func describeCopies(root, src string, want map[string]string) string {
	var parts []string
	for _, p := range benchFileNames(want) {
		local := filepath.Join(root, filepath.FromSlash(p))
		f, err := os.Open(local)
		if err != nil {
			parts = append(parts, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		f.Close()
		if sum := hex.EncodeToString(h.Sum(nil)); err != nil || sum != want[p] {
			srcSize := int64(-1)
			if st, err := os.Stat(filepath.Join(src, filepath.FromSlash(p))); err == nil {
				srcSize = st.Size()
			}
			parts = append(parts, fmt.Sprintf("%s: copy %d bytes, sha256 %s; source %d bytes", p, n, sum, srcSize))
		}
	}
	if len(parts) == 0 {
		return "every copy tee wrote matches its source"
	}
	return strings.Join(parts, "; ")
}

func firstErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// shellQuote quotes s for a POSIX shell (the remote command line).
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func benchFileNames(want map[string]string) []string {
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// checkSums checks sha256sum output ("<hash>  ./path" lines) against want.
func checkSums(out []byte, want map[string]string) error {
	got := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		sum, path, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			return fmt.Errorf("sha256sum: unexpected line %q", sc.Text())
		}
		got[strings.TrimPrefix(path, "./")] = sum
	}
	for p, sum := range want {
		if got[p] != sum {
			return fmt.Errorf("%s has sha256 %q, want %s", p, got[p], sum)
		}
	}
	return nil
}

// runCPU runs cmd and returns its CPU seconds, with the processes it waited for (scp's ssh).
func runCPU(cmd *exec.Cmd) (float64, error) {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%s: %v: %s", cmd.Args[0], err, out)
	}
	return (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds(), nil
}

// benchResult holds every round of one method.
type benchResult struct {
	seconds []float64
	cpu     []float64
	// machine is the CPU seconds of the whole machine during the copy: the client, sshd,
	// the SFTP server and anything else running. With two cores, a copy that keeps both
	// busy can be no faster than half of it.
	machine []float64
}

// machineCPU is the CPU time the machine has spent busy since boot, in seconds: every
// field of /proc/stat's cpu line but idle and iowait (in USER_HZ, 100 per second on Linux).
func machineCPU(b *testing.B) float64 {
	b.Helper()
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatalf("machine CPU: %v", err)
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		b.Fatalf("machine CPU: unexpected /proc/stat line %q", line)
	}
	busy := 0.0
	// user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
	for i, v := range f[1:min(len(f), 9)] {
		if i == 3 || i == 4 {
			continue
		}
		x, err := strconv.ParseFloat(v, 64)
		if err != nil {
			b.Fatalf("machine CPU: %q in %q", v, line)
		}
		busy += x
	}
	return busy / 100
}

// runBenchRounds runs every method rounds times, interleaved with a rotating order, checks
// each copy by sha256 outside the timing, and returns the rounds of each method.
func runBenchRounds(b *testing.B, methods []benchMethod, rounds int, src string, want map[string]string) []benchResult {
	res := make([]benchResult, len(methods))
	for round := range rounds {
		for i := range methods {
			m := (i + round) % len(methods)
			dst := filepath.Join(b.TempDir(), "dst")
			if err := os.MkdirAll(dst, 0o755); err != nil {
				b.Fatal(err)
			}
			// Earlier copies' dirty pages are not this copy's cost.
			syscall.Sync()
			busy0 := machineCPU(b)
			start := time.Now()
			cpu, err := methods[m].run(dst)
			secs := time.Since(start).Seconds()
			busy := machineCPU(b) - busy0
			if err != nil {
				b.Fatalf("%s: %v", methods[m].name, err)
			}
			checkCopy(b, methods[m].name, filepath.Join(dst, filepath.Base(src)), want)
			if err := os.RemoveAll(dst); err != nil {
				b.Fatal(err)
			}
			res[m].seconds = append(res[m].seconds, secs)
			res[m].cpu = append(res[m].cpu, cpu)
			res[m].machine = append(res[m].machine, busy)
			b.Logf("round %d %-22s %6.2f s", round+1, methods[m].name, secs)
		}
	}
	return res
}

// stats is the median, min and max of xs.
func stats(xs []float64) (median, lo, hi float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0, 0, 0
	}
	median = s[n/2]
	if n%2 == 0 {
		median = (s[n/2-1] + s[n/2]) / 2
	}
	return median, s[0], s[n-1]
}

// reportDownload prints the table of medians and reports Download's ratio to scp (raw) and
// to the fastest verified OpenSSH peer, each a ratio of medians.
func reportDownload(b *testing.B, title string, methods []benchMethod, res []benchResult, files int, total int64) (vsSCP, vsVerified float64) {
	med := make([]float64, len(methods))
	for i := range methods {
		med[i], _, _ = stats(res[i].seconds)
	}
	scp, verifiedPeer := 0.0, 0.0
	for i, m := range methods {
		if m.name == "scp" {
			scp = med[i]
		}
		if m.verified && !strings.HasPrefix(m.name, "sshrunner") && (verifiedPeer == 0 || med[i] < verifiedPeer) {
			verifiedPeer = med[i]
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%s: %d bytes (%d MiB) in %d files, median of %d interleaved rounds [min-max]\n",
		title, total, total>>20, files, len(res[0].seconds))
	fmt.Fprintf(&sb, "%-22s %8s %21s %8s %9s %13s %14s\n", "method", "verified", "seconds [min-max]", "MB/s", "scp/this", "client CPU s", "machine CPU s")
	for i, m := range methods {
		s, lo, hi := stats(res[i].seconds)
		c, _, _ := stats(res[i].cpu)
		mc, _, _ := stats(res[i].machine)
		fmt.Fprintf(&sb, "%-22s %8v %6.2f [%5.2f-%5.2f] %8.1f %8.2fx %13.2f %14.2f\n", m.name, m.verified, s, lo, hi,
			float64(total)/1e6/s, scp/s, c, mc)
		b.ReportMetric(s, m.name+"-s")
	}
	vsSCP = scp / med[0]
	vsVerified = verifiedPeer / med[0]
	fmt.Fprintf(&sb, "%s vs scp (raw): %.2fx; vs the fastest verified OpenSSH peer: %.2fx\n", methods[0].name, vsSCP, vsVerified)
	b.ReportMetric(vsSCP, "x-vs-scp")
	b.ReportMetric(vsVerified, "x-vs-verified-peer")
	b.ReportMetric(0, "ns/op")
	fmt.Print(sb.String())
	return vsSCP, vsVerified
}

// BenchmarkDownload pulls 1 GiB of model-like files from a loopback sshd with Download
// (defaults, which choose the SFTP sessions by the round trip: one here; and four, the most
// it chooses) and with OpenSSH: scp raw, scp followed by sha256sum on
// every core, and ssh|tee|sha256sum hashing alongside the copy (host key pinned through
// known_hosts, the same AES-GCM cipher everywhere). Goal: Download, verification kept, at
// least 1.0x scp raw. Run it with -benchtime 1x.
func BenchmarkDownload(b *testing.B) {
	srv := sshdtest.Start(b)
	s := loopbackServer(srv)
	src := filepath.Join(b.TempDir(), "out")
	want, total := writeBenchFiles(b, src, benchFiles)
	methods := []benchMethod{
		downloadMethod("sshrunner", s, src, want, nil),
		downloadMethod("sshrunner-4sess", s, src, want, &sshrunner.DownloadOptions{Sessions: 4}),
		scpMethod(s, src),
		scpSHA256Method(s, src, want),
		pipeSHA256Method(s, src, want),
	}
	b.ResetTimer()
	var res []benchResult
	for range b.N {
		res = runBenchRounds(b, methods, benchRounds, src, want)
	}
	b.StopTimer()
	reportDownload(b, "loopback", methods, res, len(want), total)
}

func cpuSeconds(ru syscall.Rusage) float64 {
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

// writeBenchFiles writes files under dir with pseudo-random content (incompressible, like
// weights) and returns their sha256 by path and their total size.
func writeBenchFiles(b *testing.B, dir string, files []benchFile) (map[string]string, int64) {
	b.Helper()
	rng := rand.NewChaCha8([32]byte{1, 2, 3})
	sums := map[string]string{}
	var total int64
	for _, f := range files {
		p := filepath.Join(dir, filepath.FromSlash(f.name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		out, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.CopyN(io.MultiWriter(out, h), rng, f.size); err != nil {
			b.Fatal(err)
		}
		if err := out.Close(); err != nil {
			b.Fatal(err)
		}
		sums[f.name] = hex.EncodeToString(h.Sum(nil))
		total += f.size
	}
	return sums, total
}

// checkCopy checks by sha256 that root holds every file.
func checkCopy(b *testing.B, name, root string, want map[string]string) {
	b.Helper()
	for p, sum := range want {
		f, err := os.Open(filepath.Join(root, filepath.FromSlash(p)))
		if err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != sum {
			b.Fatalf("%s: %s has sha256 %s, want %s", name, p, got, sum)
		}
	}
}
