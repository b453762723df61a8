package lifecycle

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/understudy-ai/training-service/internal/testenv"
	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/store"
)

func TestStderrLinesAreLoggedInOrderAndNotRepeated(t *testing.T) {
	h := newHarness(t, Config{})
	h.conn.lines = []string{
		okLines[0],
		`{"v":1,"event":"log","time":1.5,"level":"info","message":"UserWarning: no attention mask","stream":"stderr","stderr_offset":31}`,
		okLines[1],
		`{"v":1,"event":"log","time":2.5,"level":"info","message":"a note of the runtime's own"}`,
		`{"v":1,"event":"log","time":2.6,"level":"info","message":"Traceback (most recent call last):","stream":"stderr","stderr_offset":66}`,
		`{"v":1,"event":"error","time":3,"code":"internal","message":"RuntimeError: boom"}`,
	}
	h.conn.exitCode = 1
	h.conn.runOutput = func(cmd string) []byte {
		if strings.Contains(cmd, "stderr.log") {
			return []byte("written after the last event\n")
		}
		return nil
	}
	h.drv.Start(context.Background())
	h.submit("stderr")
	j := h.waitFor("stderr", job.StatusFailed)
	if j.Error.Code != job.ReasonTrainingFailed || j.Error.Message != "internal: RuntimeError: boom" {
		t.Fatalf("error %+v", j.Error)
	}
	logs, _ := h.store.LogList(context.Background(), "stderr", 0, 0)
	var got []string
	for _, l := range logs {
		switch l.Stream {
		case "progress", "stderr":
			got = append(got, l.Stream+": "+l.Text)
		}
	}
	want := []string{
		"progress: " + okLines[0],
		"stderr: UserWarning: no attention mask",
		"progress: " + okLines[1],
		"progress: " + h.conn.lines[3],
		"stderr: Traceback (most recent call last):",
		"progress: " + h.conn.lines[5],
		"stderr: written after the last event",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	h.conn.mu.Lock()
	defer h.conn.mu.Unlock()
	if !slices.ContainsFunc(h.conn.commands, func(c string) bool { return strings.Contains(c, stderrTail("/w/stderr")) }) {
		t.Fatalf("no stderr tail asked for: %q", h.conn.commands)
	}
}

// A job that completes keeps what its runtime wrote to stderr after the last streamed line:
// the machine, and the file, go with the teardown.
func TestStderrAfterDoneIsKept(t *testing.T) {
	h := newHarness(t, Config{})
	h.conn.runOutput = func(cmd string) []byte {
		if strings.Contains(cmd, "stderr.log") {
			return []byte("UserWarning: written at exit\n")
		}
		return nil
	}
	h.drv.Start(context.Background())
	h.submit("exitwarn")
	h.waitFor("exitwarn", job.StatusCompleted)
	logs, _ := h.store.LogList(context.Background(), "exitwarn", 0, 0)
	if !slices.ContainsFunc(logs, func(l store.LogLine) bool { return l.Stream == "stderr" && l.Text == "UserWarning: written at exit" }) {
		t.Fatalf("the stderr written after done is not in the log: %+v", logs)
	}
}

// stderrTail runs in a real shell against real files: what the job's log gets of stderr.log
// after a failure.
func TestStderrTailTakesWhatTheStreamMissed(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		testenv.Missing(t, "no POSIX sh to run the tail command in")
	}
	t.Parallel()
	streamed := "UserWarning: no attention mask\nTraceback (most recent call last):\n"
	for _, tc := range []struct {
		name, progress, stderr, want string
	}{
		{
			name: "streamed: only what follows the last streamed line",
			progress: `{"v":1,"event":"log","time":1,"level":"info","message":"UserWarning: no attention mask","stream":"stderr","stderr_offset":31}` + "\n" +
				`{"v":1,"event":"log","time":2,"level":"info","message":"\"stderr_offset\":1","stream":"stderr","stderr_offset":66}` + "\n" +
				`{"v":1,"event":"step","time":3,"step":1,"total_steps":2,"epoch":0.5,"loss":2.5,"learning_rate":0.1,"tokens_per_second":10,"eta_seconds":1}` + "\n",
			stderr: streamed + "Fatal Python error: Segmentation fault\n",
			want:   "Fatal Python error: Segmentation fault\n",
		},
		{
			name:     "streamed all of it",
			progress: `{"v":1,"event":"log","time":2,"level":"info","message":"Traceback (most recent call last):","stream":"stderr","stderr_offset":66}` + "\n",
			stderr:   streamed,
			want:     "",
		},
		{
			name:     "nothing streamed: the tail",
			progress: `{"v":1,"event":"log","time":1,"level":"info","message":"a note"}` + "\n",
			stderr:   "ModuleNotFoundError: No module named 'torch'\n",
			want:     "ModuleNotFoundError: No module named 'torch'\n",
		},
		{
			name:     "a long remainder: its last 4000 bytes",
			progress: `{"v":1,"event":"log","time":1,"level":"info","message":"x","stream":"stderr","stderr_offset":2}` + "\n",
			stderr:   "x\n" + strings.Repeat("y", 5000) + "\nlast\n",
			want:     strings.Repeat("y", 3994) + "\nlast\n",
		},
		{name: "no files"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wd := t.TempDir()
			if tc.progress != "" {
				writeFile(t, filepath.Join(wd, "progress.jsonl"), tc.progress)
			}
			if tc.stderr != "" {
				writeFile(t, filepath.Join(wd, "stderr.log"), tc.stderr)
			}
			out, err := exec.Command("sh", "-c", stderrTail(wd)).CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if string(out) != tc.want {
				t.Fatalf("got %q, want %q", out, tc.want)
			}
		})
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
