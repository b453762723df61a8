package bench

import (
	"cmp"
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

// overheadRounds is how many (direct, service) pairs each job length runs. The pairs
// interleave the two ways, the order flipping every round, and every figure is the median
// of the rounds with min and max beside it.
const overheadRounds = 5

// phaseOrder lists a job's statuses up to completed, then the part of the service's wall
// time that no status covers (the start request before the job is recorded, polling lag).
var phaseOrder = []string{"queued", "provisioning", "uploading", "training", "downloading", "tearing_down", "unaccounted"}

// jobPhases splits a job's wall time by its lifecycle events: the seconds from each status
// event to the next, and what remains of wall outside the first and last event.
func jobPhases(b *testing.B, s *servicetest.Service, id string, wall time.Duration) map[string]float64 {
	var out struct {
		Events []struct {
			Time   time.Time `json:"time"`
			Type   string    `json:"type"`
			Status string    `json:"status"`
		} `json:"events"`
	}
	if code := s.Request("GET", "/api/v1/training/"+id+"/events", nil, &out); code != 200 {
		b.Fatalf("events %s: %d", id, code)
	}
	type mark struct {
		status string
		at     time.Time
	}
	var marks []mark
	for _, e := range out.Events {
		if e.Type == "status" {
			marks = append(marks, mark{e.Status, e.Time})
		}
	}
	if len(marks) < 2 || marks[0].status != "queued" || marks[len(marks)-1].status != "completed" {
		b.Fatalf("job %s: status events %v do not run from queued to completed", id, marks)
	}
	phases := map[string]float64{}
	for i := 0; i+1 < len(marks); i++ {
		phases[marks[i].status] += marks[i+1].at.Sub(marks[i].at).Seconds()
	}
	phases["unaccounted"] = wall.Seconds() - marks[len(marks)-1].at.Sub(marks[0].at).Seconds()
	return phases
}

// spread is the median, min and max of xs.
func spread(xs []float64) (median, lo, hi float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	median = s[n/2]
	if n%2 == 0 {
		median = (s[n/2-1] + s[n/2]) / 2
	}
	return median, s[0], s[n-1]
}

// BenchmarkControlPlaneOverhead compares the same command run straight over ssh with the
// same command run as a job through the service (provision, upload, detached run, follow,
// download, verify, destroy), in overheadRounds interleaved pairs, and splits the service's
// time by the job's lifecycle events so that the phases add up to the total. Goal: at most
// 3 s added per job, at most 1.10x for a 60 s job. Run it with -benchtime 1x.
func BenchmarkControlPlaneOverhead(b *testing.B) {
	bin, python, _ := servicetest.Prerequisites(b)
	for _, secs := range []int{5, 60} {
		b.Run(fmt.Sprintf("job=%ds", secs), func(b *testing.B) {
			runtime := fakeRuntime(b, secs)
			srv := sshdtest.Start(b)
			s := servicetest.New(b, bin, python)
			s.Args = []string{"--runtime-dir", runtime}
			s.Start()
			var direct, service, added, ratio []float64
			var phases []map[string]float64
			for i := 0; i < b.N; i++ {
				for round := range overheadRounds {
					var d, sv time.Duration
					id := fmt.Sprintf("overhead-%d-%d-%d", secs, i, round)
					if round%2 == 0 {
						d = runDirect(b, srv, runtime)
						sv = runService(b, s, id)
					} else {
						sv = runService(b, s, id)
						d = runDirect(b, srv, runtime)
					}
					direct = append(direct, d.Seconds())
					service = append(service, sv.Seconds())
					added = append(added, (sv - d).Seconds())
					ratio = append(ratio, sv.Seconds()/d.Seconds())
					phases = append(phases, jobPhases(b, s, id, sv))
					b.Logf("round %d: direct %.2f s, service %.2f s", round+1, d.Seconds(), sv.Seconds())
				}
			}
			var sb strings.Builder
			fmt.Fprintf(&sb, "\njob=%ds: median of %d interleaved pairs [min-max]\n", secs, len(direct))
			for _, row := range []struct {
				name string
				xs   []float64
				unit string
			}{{"direct", direct, "s"}, {"service", service, "s"}, {"added", added, "s"}, {"ratio", ratio, "x"}} {
				m, lo, hi := spread(row.xs)
				fmt.Fprintf(&sb, "  %-8s %7.3f%s [%.3f-%.3f]\n", row.name, m, row.unit, lo, hi)
			}
			// The run of median service time, whose phases add up to its total exactly.
			order := make([]int, len(service))
			for i := range order {
				order[i] = i
			}
			slices.SortFunc(order, func(x, y int) int { return cmp.Compare(service[x], service[y]) })
			mid := order[len(order)/2]
			fmt.Fprintf(&sb, "  service phases: the median run (%.3f s) | median [min-max] over runs\n", service[mid])
			sum := 0.0
			for _, p := range phaseOrder {
				xs := make([]float64, len(phases))
				for i := range phases {
					xs[i] = phases[i][p]
				}
				m, lo, hi := spread(xs)
				sum += phases[mid][p]
				fmt.Fprintf(&sb, "    %-13s %7.3f s | %7.3f [%.3f-%.3f]\n", p, phases[mid][p], m, lo, hi)
				b.ReportMetric(m, p+"-s")
			}
			fmt.Fprintf(&sb, "    %-13s %7.3f s\n", "sum", sum)
			fmt.Print(sb.String())
			m, _, _ := spread(direct)
			b.ReportMetric(m, "direct-s/job")
			m, _, _ = spread(service)
			b.ReportMetric(m, "service-s/job")
			m, _, _ = spread(added)
			b.ReportMetric(m, "added-s/job")
			m, _, _ = spread(ratio)
			b.ReportMetric(m, "ratio")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// concurrentRounds is how many times BenchmarkConcurrentJobs submits its 50 jobs; figures
// are the median of the rounds with min and max.
const concurrentRounds = 5

// BenchmarkConcurrentJobs runs 50 short jobs at once, concurrentRounds times, and checks
// after each round that all completed and that no stack or sshd is left; it reports jobs
// per minute and the service's peak memory in each round. Run it with -benchtime 1x.
func BenchmarkConcurrentJobs(b *testing.B) {
	bin, python, _ := servicetest.Prerequisites(b)
	const jobs = 50
	runtime := fakeRuntime(b, 2)
	s := servicetest.New(b, bin, python)
	s.Args = []string{"--runtime-dir", runtime, "--max-concurrent", "10"}
	s.Start()
	pid, _ := s.Running()
	var rates, peaks []float64
	for i := 0; i < b.N; i++ {
		for round := range concurrentRounds {
			// Each round's own peak: writing 5 to clear_refs resets VmHWM to the current RSS.
			resetPeak := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
			start := time.Now()
			var wg sync.WaitGroup
			for j := 0; j < jobs; j++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					runService(b, s, fmt.Sprintf("many-%d-%d-%d", i, round, j))
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			if names := s.StackNames(); len(names) > 0 {
				b.Fatalf("round %d: stacks left: %v", round+1, names)
			}
			if pids := s.Processes(); len(pids) != 1 || !slices.Contains(pids, pid) {
				b.Fatalf("round %d: processes of the data dir still running besides the service: %v", round+1, pids)
			}
			rates = append(rates, float64(jobs)/elapsed.Minutes())
			peak := float64(peakRSS(b, pid)) / (1 << 20)
			if resetPeak != nil {
				// Without the reset the figure is the peak of every round so far.
				b.Logf("round %d: reset the peak: %v", round+1, resetPeak)
			}
			peaks = append(peaks, peak)
			b.Logf("round %d: %d jobs in %.1f s (%.1f jobs/min), peak %.1f MiB", round+1, jobs, elapsed.Seconds(), rates[len(rates)-1], peak)
		}
	}
	m, lo, hi := spread(rates)
	fmt.Printf("\n%d concurrent jobs, median of %d rounds [min-max]: %.1f jobs/min [%.1f-%.1f]", jobs, len(rates), m, lo, hi)
	b.ReportMetric(m, "jobs/min")
	m, lo, hi = spread(peaks)
	fmt.Printf(", service peak %.1f MiB [%.1f-%.1f]\n", m, lo, hi)
	b.ReportMetric(m, "peak-MiB")
	b.ReportMetric(0, "ns/op")
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
