package sshrunner_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gocloud.dev/blob/fileblob"

	"github.com/understudy-ai/training-service/sshrunner"
	"github.com/understudy-ai/training-service/sshrunner/sshdtest"
)

// benchFiles is 1 GiB shaped like a model output directory.
var benchFiles = []struct {
	name string
	size int64
}{
	{"model.safetensors", 800 << 20},
	{"optimizer/shard-0.bin", 50 << 20},
	{"optimizer/shard-1.bin", 50 << 20},
	{"optimizer/shard-2.bin", 50 << 20},
	{"optimizer/shard-3.bin", 50 << 20},
	{"tokenizer.json", 24<<20 - 8<<10},
	{"config.json", 4 << 10},
	{"generation_config.json", 4 << 10},
}

// BenchmarkDownload pulls 1 GiB of model-like files from a loopback sshd with Download and
// with the OpenSSH scp and sftp clients (host key pinned through known_hosts), checks every
// copy by sha256 and reports seconds, MB/s and Download's speed relative to the faster
// OpenSSH client. Run it with -benchtime 1x.
func BenchmarkDownload(b *testing.B) {
	srv := sshdtest.Start(b)
	src := filepath.Join(b.TempDir(), "out")
	want := writeBenchFiles(b, src)
	var total int64
	for _, f := range benchFiles {
		total += f.size
	}

	type result struct {
		name    string
		seconds float64
	}
	var results []result
	measure := func(name string, run func(b *testing.B, dst string) func() error) {
		b.Run(name, func(b *testing.B) {
			var best float64
			for range b.N {
				dst := filepath.Join(b.TempDir(), "dst")
				if err := os.MkdirAll(dst, 0o755); err != nil {
					b.Fatal(err)
				}
				copyAll := run(b, dst)
				// Earlier copies' dirty pages are not this copy's cost.
				syscall.Sync()
				b.StartTimer()
				busy0, idle0 := cpuTimes()
				start := time.Now()
				if err := copyAll(); err != nil {
					b.Fatalf("%s: %v", name, err)
				}
				secs := time.Since(start).Seconds()
				busy1, idle1 := cpuTimes()
				b.StopTimer()
				fmt.Printf("%s: %.2f s, machine CPU busy %.0f%%\n", name, secs, 100*float64(busy1-busy0)/float64(busy1-busy0+idle1-idle0))
				if best == 0 || secs < best {
					best = secs
				}
				checkCopy(b, name, dst, want)
				os.RemoveAll(dst)
			}
			b.ReportMetric(best, "s")
			b.ReportMetric(float64(total)/1e6/best, "MB/s")
			b.ReportMetric(0, "ns/op")
			results = append(results, result{name, best})
		})
	}

	b.StopTimer()
	measure("sshrunner", func(b *testing.B, dst string) func() error {
		return func() error {
			ctx := context.Background()
			c, err := sshrunner.Dial(ctx, srv.Target(), nil)
			if err != nil {
				return err
			}
			defer c.Close()
			// No sidecar attribute files: like scp and sftp, store the bytes only.
			bucket, err := fileblob.OpenBucket(dst, &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
			if err != nil {
				return err
			}
			defer bucket.Close()
			_, err = c.Download(ctx, src, bucket, "", nil)
			return err
		}
	})
	openSSH := func(tool string, args ...string) func(b *testing.B, dst string) func() error {
		return func(b *testing.B, dst string) func() error {
			return func() error {
				a := append(srv.OpenSSHArgs(), "-c", "aes128-gcm@openssh.com")
				a = append(a, args...)
				a = slices.Concat(a, nil)
				for i := range a {
					a[i] = strings.ReplaceAll(strings.ReplaceAll(a[i], "{src}", src), "{dst}", dst)
				}
				cmd := exec.Command(tool, a...)
				if tool == "sftp" {
					cmd.Stdin = strings.NewReader(fmt.Sprintf("get -r %s %s\n", src, dst))
				}
				out, err := cmd.CombinedOutput()
				if err != nil {
					return fmt.Errorf("%v: %s", err, out)
				}
				return nil
			}
		}
	}
	port := strconv.Itoa(srv.Port)
	measure("scp", openSSH("scp", "-q", "-r", "-P", port, srv.User+"@127.0.0.1:{src}", "{dst}/"))
	measure("sftp", openSSH("sftp", "-q", "-b", "-", "-P", port, srv.User+"@127.0.0.1"))

	var ours, fastest float64
	var fastestName string
	for _, r := range results {
		if r.name == "sshrunner" {
			ours = r.seconds
		} else if fastest == 0 || r.seconds < fastest {
			fastest, fastestName = r.seconds, r.name
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%d bytes (%.0f MiB) in %d files\n", total, float64(total)/(1<<20), len(benchFiles))
	for _, r := range results {
		fmt.Fprintf(&sb, "%-10s %7.2f s %8.1f MB/s\n", r.name, r.seconds, float64(total)/1e6/r.seconds)
	}
	if ours > 0 && fastest > 0 {
		fmt.Fprintf(&sb, "sshrunner vs %s: %.2fx\n", fastestName, fastest/ours)
	}
	fmt.Print(sb.String())
}

// writeBenchFiles writes benchFiles under dir with pseudo-random content (incompressible,
// like weights) and returns their sha256 by path.
func writeBenchFiles(b *testing.B, dir string) map[string]string {
	b.Helper()
	rng := rand.NewChaCha8([32]byte{1, 2, 3})
	sums := map[string]string{}
	for _, f := range benchFiles {
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
	}
	return sums
}

// checkCopy checks by sha256 that dst (or, for scp and sftp, dst/out) holds every file.
func checkCopy(b *testing.B, name, dst string, want map[string]string) {
	b.Helper()
	root := dst
	if _, err := os.Stat(filepath.Join(dst, "out")); err == nil {
		root = filepath.Join(dst, "out")
	}
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

// cpuTimes returns the machine's busy and idle jiffies from /proc/stat.
func cpuTimes() (busy, idle uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		} else {
			busy += v
		}
	}
	return busy, idle
}
