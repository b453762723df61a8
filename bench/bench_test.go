package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/internal/servicetest"
	"github.com/understudy-ai/training-service/sshrunner/sshdtest"
)

// fakeRuntime writes a runtime dir whose launch.sh runs for secs seconds.
func fakeRuntime(b *testing.B, secs int) string {
	raw, err := os.ReadFile(filepath.Join("testdata", "fake-launch.sh"))
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	script := strings.ReplaceAll(string(raw), "__SECONDS__", strconv.Itoa(secs))
	if err := os.WriteFile(filepath.Join(dir, "launch.sh"), []byte(script), 0o755); err != nil {
		b.Fatal(err)
	}
	return dir
}

func startBody(id string) map[string]any {
	return map[string]any{
		"train_id": id, "endpoint_id": "bench", "version": 1, "training_pairs_count": 1,
		"slm_type": "fake", "source_llm": "bench", "provider": "local",
		"training_pairs": []map[string]string{{"prompt": "p", "response": "r"}},
	}
}

// runDirect runs the fake runtime straight over OpenSSH against a local sshd and returns
// the wall time: the baseline the service is compared with.
func runDirect(b *testing.B, srv *sshdtest.Server, runtime string) time.Duration {
	work := filepath.Join(srv.Dir, "direct-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if err := os.MkdirAll(filepath.Join(work, "runtime"), 0o700); err != nil {
		b.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(runtime, "launch.sh"))
	os.WriteFile(filepath.Join(work, "runtime", "launch.sh"), raw, 0o755)
	args := append(srv.OpenSSHArgs(), "-p", strconv.Itoa(srv.Port), srv.User+"@127.0.0.1",
		"bash "+filepath.Join(work, "runtime", "launch.sh")+" > "+filepath.Join(work, "progress.jsonl"))
	start := time.Now()
	if out, err := exec.Command("ssh", args...).CombinedOutput(); err != nil {
		b.Fatalf("direct ssh run: %v\n%s\n%s", err, out, srv.Log())
	}
	return time.Since(start)
}

// runService submits one job and returns the time from the start request to completed.
func runService(b *testing.B, s *servicetest.Service, id string) time.Duration {
	start := time.Now()
	if code := s.Request("POST", "/api/v1/training/start", startBody(id), nil); code != 202 {
		b.Fatalf("start %s: %d", id, code)
	}
	for {
		j := s.Job(id)
		switch j.Status {
		case "completed":
			return time.Since(start)
		case "failed", "cancelled":
			b.Fatalf("job %s ended %s: %+v", id, j.Status, j.Error)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// BenchmarkControlPlaneOverhead compares the same command run straight over ssh with the
// same command run as a job through the service (provision, upload, detached run, follow,
// download, verify, destroy). Goal: at most 3 s added per job, at most 1.10× for a 60 s job.
func BenchmarkControlPlaneOverhead(b *testing.B) {
	bin, python, _ := servicetest.Prerequisites(b)
	for _, secs := range []int{5, 60} {
		b.Run(fmt.Sprintf("job=%ds", secs), func(b *testing.B) {
			runtime := fakeRuntime(b, secs)
			srv := sshdtest.Start(b)
			s := servicetest.New(b, bin, python)
			s.Args = []string{"--runtime-dir", runtime}
			s.Start()
			var direct, service time.Duration
			for i := 0; i < b.N; i++ {
				direct += runDirect(b, srv, runtime)
				service += runService(b, s, fmt.Sprintf("overhead-%d-%d", secs, i))
			}
			n := time.Duration(b.N)
			b.ReportMetric((direct / n).Seconds(), "direct-s/job")
			b.ReportMetric((service / n).Seconds(), "service-s/job")
			b.ReportMetric(((service - direct) / n).Seconds(), "added-s/job")
			b.ReportMetric(float64(service)/float64(direct), "ratio")
		})
	}
}

// BenchmarkConcurrentJobs runs 50 short jobs at once and checks that all complete and that
// no stack or sshd is left; it reports jobs per minute and the service's peak memory.
func BenchmarkConcurrentJobs(b *testing.B) {
	bin, python, _ := servicetest.Prerequisites(b)
	const jobs = 50
	runtime := fakeRuntime(b, 2)
	s := servicetest.New(b, bin, python)
	s.Args = []string{"--runtime-dir", runtime, "--max-concurrent", "10"}
	s.Start()
	pid, _ := s.Running()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		var wg sync.WaitGroup
		for j := 0; j < jobs; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runService(b, s, fmt.Sprintf("many-%d-%d", i, j))
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		b.ReportMetric(float64(jobs)/elapsed.Minutes(), "jobs/min")
	}
	if names := s.StackNames(); len(names) > 0 {
		b.Fatalf("stacks left: %v", names)
	}
	if pids := s.Processes(); len(pids) != 1 || !slices.Contains(pids, pid) {
		b.Fatalf("processes of the data dir still running besides the service: %v", pids)
	}
	b.ReportMetric(float64(peakRSS(b, pid))/(1<<20), "peak-MiB")
}

// peakRSS reads the process's high-water resident set size in bytes.
func peakRSS(b *testing.B, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmHWM in /proc status")
	return 0
}
