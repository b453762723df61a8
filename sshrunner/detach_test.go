package sshrunner_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/sshrunner"
	"github.com/understudy-ai/training-service/sshrunner/sshdtest"
)

type line struct {
	text string
	end  int64
}

// follow runs Follow and collects the lines.
func follow(ctx context.Context, c *sshrunner.Client, dir string, offset int64) ([]line, int, error) {
	var got []line
	code, err := c.Follow(ctx, dir, offset, func(b []byte, end int64) error {
		got = append(got, line{string(b), end})
		return nil
	})
	return got, code, err
}

// checkEnds checks that each line ends where the next begins, starting at offset, and
// that the lines are the file's content.
func checkEnds(t *testing.T, lines []line, offset int64, content []byte) {
	t.Helper()
	pos := offset
	for i, l := range lines {
		pos += int64(len(l.text))
		if pos < int64(len(content)) && content[pos] == '\n' {
			pos++
		}
		if l.end != pos {
			t.Errorf("line %d (%q) ends at %d, want %d", i, l.text, l.end, pos)
			pos = l.end
		}
	}
	if pos != int64(len(content)) {
		t.Errorf("lines end at %d, file has %d bytes", pos, len(content))
	}
}

func TestStartFollow(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	ctx := testContext(t)
	dir := filepath.Join(t.TempDir(), "job")
	killRunAtCleanup(t, dir)

	// The second line is only written once the test has seen the first, which shows lines
	// are passed on while the run is going; the last one has no newline.
	script := `echo '{"n":1}'
echo 'to stderr' >&2
while [ ! -e go ]; do sleep 0.05; done
sleep 0.3
echo '{"n":2}'
printf '{"n":3}'
exit 3`
	if err := c.Start(ctx, dir, script, nil); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var got []line
	code, err := c.Follow(ctx, dir, 0, func(b []byte, end int64) error {
		got = append(got, line{string(b), end})
		if string(b) == `{"n":1}` {
			return os.WriteFile(filepath.Join(dir, "go"), nil, 0o600)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Follow: %v", err)
	}
	if code != 3 {
		t.Errorf("exit code %d, want 3", code)
	}
	want := []line{{`{"n":1}`, 8}, {`{"n":2}`, 16}, {`{"n":3}`, 23}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("lines %v, want %v", got, want)
	}
	stderr, _ := os.ReadFile(filepath.Join(dir, "stderr.log"))
	if string(stderr) != "to stderr\n" {
		t.Errorf("stderr.log = %q", stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "exit_code")); strings.TrimSpace(string(b)) != "3" {
		t.Errorf("exit_code = %q", b)
	}

	// Reattaching after the end, from the middle, gives the rest and the code again.
	rest, code, err := follow(ctx, c, dir, 8)
	if err != nil || code != 3 || fmt.Sprint(rest) != fmt.Sprint(want[1:]) {
		t.Errorf("Follow from 8 = %v, %d, %v; want %v, 3, nil", rest, code, err, want[1:])
	}
}

func TestStartEnvQuoted(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	ctx := testContext(t)
	dir := filepath.Join(t.TempDir(), "it's a dir")
	killRunAtCleanup(t, dir)

	env := map[string]string{
		"TRICKY": "it's $HOME `id` $(id) \"q\" \\ ; rm -rf / \n next line",
		"EMPTY":  "",
	}
	err := c.Start(ctx, dir, `printf '%s' "$TRICKY" > tricky; printf '[%s]' "$EMPTY" > empty`, env)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if _, code, err := follow(ctx, c, dir, 0); err != nil || code != 0 {
		t.Fatalf("Follow: %d, %v", code, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "tricky")); string(b) != env["TRICKY"] {
		t.Errorf("TRICKY arrived as %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "empty")); string(b) != "[]" {
		t.Errorf("EMPTY arrived as %q", b)
	}

	for _, bad := range []map[string]string{{"A B": "x"}, {"X": "nul\x00"}, {"1X": "x"}} {
		err := c.Start(ctx, filepath.Join(t.TempDir(), "bad"), "true", bad)
		if job.CodeOf(err) != job.CodeInvalidArgument {
			t.Errorf("Start with env %q: %v, want code %s", bad, err, job.CodeInvalidArgument)
		}
	}
}

// TestFollowReconnect cuts the network under a Follow, redials and follows again from the
// last offset: every line arrives exactly once.
func TestFollowReconnect(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	px := startProxy(t, fmt.Sprintf("127.0.0.1:%d", srv.Port))
	target := srv.Target()
	target.Port = px.port()
	ctx := testContext(t)
	dir := filepath.Join(t.TempDir(), "job")
	killRunAtCleanup(t, dir)

	const n = 40
	script := fmt.Sprintf(`i=1; while [ $i -le %d ]; do echo "{\"n\":$i}"; i=$((i+1)); sleep 0.05; done`, n)
	c1 := dial(t, target)
	if err := c1.Start(ctx, dir, script, nil); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var got []string
	var offset int64
	_, err := c1.Follow(ctx, dir, 0, func(b []byte, end int64) error {
		got = append(got, string(b))
		offset = end
		if len(got) == 5 {
			px.cut()
		}
		return nil
	})
	if err == nil {
		t.Fatal("Follow went on after the connection was cut")
	}
	if code := job.CodeOf(err); code != job.CodeUnavailable {
		t.Fatalf("Follow error code %s, want %s: %v", code, job.CodeUnavailable, err)
	}
	if len(got) >= n {
		t.Fatalf("the run ended before the cut; got %d lines", len(got))
	}

	c2 := dial(t, target)
	code, err := c2.Follow(ctx, dir, offset, func(b []byte, end int64) error {
		got = append(got, string(b))
		offset = end
		return nil
	})
	if err != nil || code != 0 {
		t.Fatalf("second Follow: %d, %v", code, err)
	}
	var want []string
	for i := 1; i <= n; i++ {
		want = append(want, fmt.Sprintf(`{"n":%d}`, i))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("lines across the reconnect:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	content, _ := os.ReadFile(filepath.Join(dir, "progress.jsonl"))
	if offset != int64(len(content)) {
		t.Errorf("last offset %d, file has %d bytes", offset, len(content))
	}
}

// TestFollowDeadConnection silences the network under a Follow: keepalives notice, and
// Follow fails with code Unavailable instead of waiting forever.
func TestFollowDeadConnection(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	px := startProxy(t, fmt.Sprintf("127.0.0.1:%d", srv.Port))
	target := srv.Target()
	target.Port = px.port()
	ctx := testContext(t)
	dir := filepath.Join(t.TempDir(), "job")
	killRunAtCleanup(t, dir)

	c, err := sshrunner.Dial(ctx, target, &sshrunner.Options{
		Logger:             testLogger(t),
		KeepaliveInterval:  100 * time.Millisecond,
		KeepaliveMaxMissed: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Start(ctx, dir, `echo '{"n":1}'; sleep 60`, nil); err != nil {
		t.Fatal(err)
	}
	_, err = c.Follow(ctx, dir, 0, func([]byte, int64) error {
		px.freeze()
		return nil
	})
	if code := job.CodeOf(err); code != job.CodeUnavailable {
		t.Fatalf("Follow over a dead connection: %v (code %s), want code %s", err, code, job.CodeUnavailable)
	}
	if ctx.Err() != nil {
		t.Fatal("Follow only returned when the test's context ended")
	}
}

func TestStartIdempotent(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	ctx := testContext(t)
	dir := filepath.Join(t.TempDir(), "job")
	killRunAtCleanup(t, dir)

	script := `echo run >> runs; while [ ! -e go ]; do sleep 0.05; done; echo '{"done":true}'`
	// Concurrent Starts, then one while it runs.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = c.Start(ctx, dir, script, nil) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Start %d: %v", i, err)
		}
	}
	if err := c.Start(ctx, dir, script, nil); err != nil {
		t.Fatalf("Start while running: %v", err)
	}
	waitFile(t, filepath.Join(dir, "runs"))
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	lines, code, err := follow(ctx, c, dir, 0)
	if err != nil || code != 0 || len(lines) != 1 {
		t.Fatalf("Follow: %v, %d, %v", lines, code, err)
	}
	// And once it has ended.
	if err := c.Start(ctx, dir, script, nil); err != nil {
		t.Fatalf("Start after the end: %v", err)
	}
	if _, code, err := follow(ctx, c, dir, 0); err != nil || code != 0 {
		t.Fatalf("Follow: %d, %v", code, err)
	}
	runs, _ := os.ReadFile(filepath.Join(dir, "runs"))
	if string(runs) != "run\n" {
		t.Errorf("the command ran %d times", bytes.Count(runs, []byte("run")))
	}
}

func TestSignalTerm(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	ctx := testContext(t)
	dir := filepath.Join(t.TempDir(), "job")
	killRunAtCleanup(t, dir)

	script := `trap 'echo "{\"preempted\":true}"; exit 75' TERM
echo '{"started":true}'
while :; do sleep 0.05; done`
	if err := c.Start(ctx, dir, script, nil); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var got []string
	code, err := c.Follow(ctx, dir, 0, func(b []byte, end int64) error {
		got = append(got, string(b))
		if len(got) == 1 {
			return c.Signal(ctx, dir, "SIGTERM")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Follow: %v", err)
	}
	if code != 75 || strings.Join(got, ",") != `{"started":true},{"preempted":true}` {
		t.Errorf("Follow = %q, %d; want the preempted line and 75", got, code)
	}
	// Signalling an ended run is harmless.
	if err := c.Signal(ctx, dir, "TERM"); err != nil {
		t.Errorf("Signal after the end: %v", err)
	}
	if err := c.Signal(ctx, filepath.Join(t.TempDir(), "none"), "TERM"); job.CodeOf(err) != job.CodeNotFound {
		t.Errorf("Signal without a run: %v, want code %s", err, job.CodeNotFound)
	}
	if err := c.Signal(ctx, dir, "TERM; reboot"); job.CodeOf(err) != job.CodeInvalidArgument {
		t.Errorf("Signal with a bad name: %v, want code %s", err, job.CodeInvalidArgument)
	}
}

// TestFollowProcessLost kills the run and its supervisor from outside, as a reboot or the
// OOM killer would: no exit status is ever written.
func TestFollowProcessLost(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	ctx := testContext(t)
	dir := filepath.Join(t.TempDir(), "job")
	killRunAtCleanup(t, dir)

	if err := c.Start(ctx, dir, `echo '{"started":true}'; sleep 60`, nil); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var got []string
	_, err := c.Follow(ctx, dir, 0, func(b []byte, end int64) error {
		got = append(got, string(b))
		killRun(t, dir)
		return nil
	})
	if !errors.Is(err, sshrunner.ErrProcessLost) {
		t.Fatalf("Follow error %v, want ErrProcessLost", err)
	}
	if code, reason := job.CodeOf(err), job.ReasonOf(err); code != job.CodeFailedPrecondition || reason != "process_lost" {
		t.Errorf("code %s reason %q, want %s process_lost", code, reason, job.CodeFailedPrecondition)
	}
	if len(got) != 1 {
		t.Errorf("lines %q, want the one line", got)
	}
	if err := c.Signal(ctx, dir, "TERM"); job.ReasonOf(err) != "process_lost" {
		t.Errorf("Signal of a lost run: %v, want reason process_lost", err)
	}

	// A lost run may be started again.
	if err := c.Start(ctx, dir, `echo '{"again":true}'`, nil); err != nil {
		t.Fatalf("Start again: %v", err)
	}
	lines, code, err := follow(ctx, c, dir, int64(len(`{"started":true}`)+1))
	if err != nil || code != 0 || len(lines) != 1 || lines[0].text != `{"again":true}` {
		t.Errorf("Follow of the second run: %v, %d, %v", lines, code, err)
	}
}

// TestFollowAfterReboot fakes a reboot by changing the boot id the run recorded: the
// process id in pid no longer counts, even though (here) it is still alive.
func TestFollowAfterReboot(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	ctx := testContext(t)
	dir := filepath.Join(t.TempDir(), "job")
	killRunAtCleanup(t, dir)

	if err := c.Start(ctx, dir, `echo '{"started":true}'; sleep 60`, nil); err != nil {
		t.Fatalf("Start: %v", err)
	}
	waitFile(t, filepath.Join(dir, "boot_id"))
	if err := os.WriteFile(filepath.Join(dir, "boot_id"), []byte("00000000-0000-0000-0000-000000000000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	lines, _, err := follow(ctx, c, dir, 0)
	if !errors.Is(err, sshrunner.ErrProcessLost) || job.ReasonOf(err) != "process_lost" {
		t.Fatalf("Follow after a reboot: %v, want process_lost", err)
	}
	if len(lines) != 1 {
		t.Errorf("lines %v, want the one line", lines)
	}
	if err := c.Signal(ctx, dir, "KILL"); job.ReasonOf(err) != "process_lost" {
		t.Errorf("Signal after a reboot: %v, want reason process_lost", err)
	}
	// Start runs it again rather than trusting the old process id, which here still names
	// the first run: end that one too at cleanup.
	old := t.TempDir()
	for _, name := range []string{"pid"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(old, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	killRunAtCleanup(t, old)
	if err := c.Start(ctx, dir, `echo '{"again":true}'`, nil); err != nil {
		t.Fatalf("Start after a reboot: %v", err)
	}
	lines, code, err := follow(ctx, c, dir, lines[0].end)
	if err != nil || code != 0 || len(lines) != 1 || lines[0].text != `{"again":true}` {
		t.Errorf("Follow of the new run: %v, %d, %v", lines, code, err)
	}
}

func TestFollowNoRun(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	_, _, err := follow(testContext(t), c, t.TempDir(), 0)
	if job.CodeOf(err) != job.CodeNotFound {
		t.Errorf("Follow without a run: %v, want code %s", err, job.CodeNotFound)
	}
}

func TestFollowCallbackError(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	ctx := testContext(t)
	dir := filepath.Join(t.TempDir(), "job")
	killRunAtCleanup(t, dir)
	if err := c.Start(ctx, dir, `echo a; echo b`, nil); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	_, err := c.Follow(ctx, dir, 0, func([]byte, int64) error { return stop })
	if err != stop {
		t.Errorf("Follow returned %v, want the callback's error as is", err)
	}
}

// TestFollowVectors streams the shared progress vectors through a run: every byte arrives,
// in lines, unchanged.
func TestFollowVectors(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t)
	c := dial(t, srv.Target())
	ctx := testContext(t)
	vectors, err := filepath.Glob(filepath.Join("..", "testdata", "progress", "*.jsonl"))
	if err != nil || len(vectors) == 0 {
		t.Fatalf("no progress vectors: %v", err)
	}
	for _, v := range vectors {
		t.Run(filepath.Base(v), func(t *testing.T) {
			want, err := os.ReadFile(v)
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(t.TempDir(), "job")
			killRunAtCleanup(t, dir)
			src, _ := filepath.Abs(v)
			// Written a line at a time, as the runtime does.
			script := `while IFS= read -r l || [ -n "$l" ]; do printf '%s\n' "$l"; sleep 0.01; done < ` + strconv.Quote(src)
			if err := c.Start(ctx, dir, script, nil); err != nil {
				t.Fatal(err)
			}
			lines, code, err := follow(ctx, c, dir, 0)
			if err != nil || code != 0 {
				t.Fatalf("Follow: %d, %v", code, err)
			}
			var got bytes.Buffer
			for _, l := range lines {
				got.WriteString(l.text + "\n")
			}
			if got.String() != string(want) {
				t.Errorf("streamed:\n%s\nwant:\n%s", got.String(), want)
			}
			checkEnds(t, lines, 0, want)
		})
	}
}
