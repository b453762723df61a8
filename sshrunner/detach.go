package sshrunner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pkg/sftp"

	"github.com/understudy-ai/training-service/job"
)

// Files of a run in its work directory.
const (
	progressFile = "progress.jsonl"
	stderrFile   = "stderr.log"
	pidFile      = "pid"
	exitCodeFile = "exit_code"
	// bootIDFile holds the machine's boot id when the run started: after a reboot the
	// process id in pidFile may name an unrelated process.
	bootIDFile = "boot_id"
)

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// shellRunFuncs defines, for scripts run in a work directory, same_boot (the machine has
// not rebooted since the run started, as far as it can tell) and alive (the run's process
// exists). A process id from before a reboot may name an unrelated process now.
const shellRunFuncs = `same_boot() {
	[ -s ` + bootIDFile + ` ] && [ -r /proc/sys/kernel/random/boot_id ] || return 0
	[ "$(cat ` + bootIDFile + `)" = "$(cat /proc/sys/kernel/random/boot_id)" ]
}
alive() {
	[ -s ` + pidFile + ` ] && same_boot && kill -0 "$(cat ` + pidFile + `)" 2>/dev/null
}
`

// Start starts command with sh in workDir (created if missing) detached from the
// connection: in a session of its own under setsid and nohup, stdout appended to
// progress.jsonl, stderr appended to stderr.log, its process id in pid, and its exit status
// written to exit_code (through a temporary file and a rename) once it exits. env is added
// to the command's environment; names must be shell identifiers, values may hold anything
// but NUL, and are passed quoted, never expanded.
//
// Start is idempotent: when exit_code exists, or the process in pid is alive, it starts
// nothing and returns nil. Starts that race on one work directory are serialised with
// flock(1) when the machine has it. A run whose process vanished without an exit status is
// started again, appending to the same files.
//
// workDir is absolute or relative to the login directory; it is never expanded.
func (c *Client) Start(ctx context.Context, workDir, command string, env map[string]string) error {
	if workDir == "" || command == "" {
		return job.Errorf(job.CodeInvalidArgument, "start run: work dir and command are required")
	}
	if strings.ContainsRune(workDir, 0) || strings.ContainsRune(command, 0) {
		return job.Errorf(job.CodeInvalidArgument, "start run: NUL in work dir or command")
	}
	names := make([]string, 0, len(env))
	for k, v := range env {
		if !envName.MatchString(k) {
			return job.Errorf(job.CodeInvalidArgument, "start run: bad environment variable name %q", k)
		}
		if strings.ContainsRune(v, 0) {
			return job.Errorf(job.CodeInvalidArgument, "start run: NUL in environment variable %s", k)
		}
		names = append(names, k)
	}
	slices.Sort(names)
	var assigns strings.Builder
	for _, k := range names {
		assigns.WriteString(" " + shellQuote(k+"="+env[k]))
	}

	// The supervisor runs detached in workDir: it starts the command in a process group of
	// its own (the group Signal targets), records its id, waits for it and records its
	// status.
	supervisor := `cat /proc/sys/kernel/random/boot_id >` + bootIDFile + `.tmp 2>/dev/null && mv -f ` + bootIDFile + `.tmp ` + bootIDFile + `
setsid env --` + assigns.String() + ` sh -c ` + shellQuote(command) + ` >>` + progressFile + ` 2>>` + stderrFile + ` </dev/null &
child=$!
echo "$child" >` + pidFile + `.tmp && mv -f ` + pidFile + `.tmp ` + pidFile + `
wait "$child"; rc=$?
echo "$rc" >` + exitCodeFile + `.tmp && mv -f ` + exitCodeFile + `.tmp ` + exitCodeFile

	launcher := shellRunFuncs + `set -e
mkdir -p -- ` + shellQuote(workDir) + `
cd -- ` + shellQuote(workDir) + `
if command -v flock >/dev/null 2>&1; then exec 9>>.start.lock; flock 9; fi
if [ -e ` + exitCodeFile + ` ]; then echo exited; exit 0; fi
if alive; then echo running; exit 0; fi
rm -f ` + pidFile + `
setsid nohup sh -c ` + shellQuote(supervisor) + ` >/dev/null 2>&1 </dev/null 9>&- &
i=0
while [ ! -s ` + pidFile + ` ]; do
	i=$((i+1))
	if [ "$i" -gt 200 ]; then echo "run wrote no pid file" >&2; exit 1; fi
	sleep 0.05
done
echo started`

	out, err := c.run(ctx, launcher)
	if err != nil {
		var ee *ExitError
		if errors.As(err, &ee) {
			return job.Wrap(job.CodeInternal, err, "start run")
		}
		return opError(ctx, err, "start run")
	}
	c.log.Info("run", "work_dir", workDir, "state", strings.TrimSpace(string(out)))
	return nil
}

var signalNames = map[string]bool{
	"TERM": true, "INT": true, "KILL": true, "HUP": true, "QUIT": true, "USR1": true, "USR2": true,
	"STOP": true, "CONT": true,
}

// Signal sends sig ("TERM", "SIGTERM", "KILL", ...) to the process group of the run in
// workDir. Signalling a run that has ended is not an error. It fails with NotFound when no
// run was started there, and with FailedPrecondition, reason "process_lost", when the
// process is gone without an exit status.
func (c *Client) Signal(ctx context.Context, workDir string, sig string) error {
	sig = strings.TrimPrefix(strings.ToUpper(sig), "SIG")
	if !signalNames[sig] {
		return job.Errorf(job.CodeInvalidArgument, "signal run: unsupported signal %q", sig)
	}
	script := shellRunFuncs + `cd -- ` + shellQuote(workDir) + ` 2>/dev/null || exit 3
[ -s ` + pidFile + ` ] || exit 3
[ -e ` + exitCodeFile + ` ] && exit 0
same_boot || exit 4
pid=$(cat ` + pidFile + `)
kill -s ` + sig + ` -- "-$pid" 2>/dev/null && exit 0
kill -s ` + sig + ` "$pid" 2>/dev/null && exit 0
# Not running: it may have just ended, in which case its status is on its way.
sleep 1
[ -e ` + exitCodeFile + ` ] && exit 0
exit 4`
	_, err := c.run(ctx, script)
	var ee *ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee) && ee.Code == 3:
		return job.Errorf(job.CodeNotFound, "signal run: no run in %s", workDir)
	case errors.As(err, &ee) && ee.Code == 4:
		return job.WithReason(job.Wrap(job.CodeFailedPrecondition, ErrProcessLost, "signal run"), job.CodeFailedPrecondition, "process_lost")
	case errors.As(err, &ee):
		return job.Wrap(job.CodeInternal, err, "signal run")
	}
	return opError(ctx, err, "signal run")
}

const (
	// followPoll is how often Follow looks for new lines when there were none: new lines
	// reach the callback within about this long.
	followPoll = 250 * time.Millisecond
	// lostGrace is how long the process must be gone with no exit status before Follow
	// gives up on it: the supervisor writes the status right after the process ends.
	lostGrace = 3 * time.Second
	// maxLine bounds a line Follow buffers; a longer one is passed on in pieces of this
	// size. The protocol caps lines at 64 KiB.
	maxLine = 1 << 20
)

// Follow streams the run's progress.jsonl in workDir from byte offset (0 for the start),
// calling onLine for each complete line, without its newline, with end, the offset just
// past that line. Persist end to reattach later: Follow from end neither repeats nor skips
// a line. line is valid only until onLine returns; an error from onLine stops Follow and is
// returned as is.
//
// Follow returns the run's exit status once exit_code exists and every line before it has
// been passed on (a last line without a newline included). Errors: code Unavailable when
// the connection is lost (redial and Follow again from the last end); FailedPrecondition
// with reason "process_lost", wrapping ErrProcessLost, when the process is gone and wrote
// no exit status; NotFound when no run was ever started in workDir; Canceled when ctx ends.
func (c *Client) Follow(ctx context.Context, workDir string, offset int64, onLine func(line []byte, end int64) error) (int, error) {
	if offset < 0 {
		return 0, job.Errorf(job.CodeInvalidArgument, "follow progress: negative offset %d", offset)
	}
	sc, done, err := c.openSFTP(ctx, "follow progress", sftp.MaxPacketUnchecked(sftpMaxPacket))
	if err != nil {
		return 0, err
	}
	defer done()
	f := &follower{
		sc:     sc,
		dir:    workDir,
		offset: offset,
		onLine: onLine,
		buf:    make([]byte, sftpMaxPacket),
	}
	code, err := f.run(ctx)
	if err != nil {
		var je *job.Error
		if errors.As(err, &je) || f.callbackErr {
			return code, err
		}
		return code, opError(ctx, err, "follow progress")
	}
	return code, nil
}

type follower struct {
	sc     *sftp.Client
	dir    string
	offset int64 // just past the last line passed on
	onLine func([]byte, int64) error

	file    *sftp.File
	pending []byte // bytes after offset read so far: an unfinished line
	buf     []byte

	pid         int
	bootID      string // the machine's boot id now, "" when unknown
	rebooted    bool   // the machine booted again since the run started
	lostSince   time.Time
	callbackErr bool
}

func (f *follower) run(ctx context.Context) (int, error) {
	defer func() {
		if f.file != nil {
			_ = f.file.Close()
		}
	}()
	if b, err := f.readSmall("/proc/sys/kernel/random/boot_id"); err == nil {
		f.bootID = strings.TrimSpace(string(b))
	}
	timer := time.NewTimer(followPoll)
	defer timer.Stop()
	for {
		grew, err := f.drain(false)
		if err != nil {
			return 0, err
		}
		code, exited, err := f.exitCode()
		if err != nil {
			return 0, err
		}
		if exited {
			// The status is written after the process ended, so this drain sees
			// everything it wrote.
			if _, err := f.drain(true); err != nil {
				return 0, err
			}
			return code, nil
		}
		if grew {
			continue
		}
		if err := f.checkAlive(); err != nil {
			return 0, err
		}
		timer.Reset(followPoll)
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-timer.C:
		}
	}
}

// drain reads what progress.jsonl holds past what was read and passes on complete lines;
// final passes on an unfinished last line too. It reports whether anything was read.
func (f *follower) drain(final bool) (bool, error) {
	if f.file == nil {
		file, err := f.sc.Open(path.Join(f.dir, progressFile))
		if errors.Is(err, fs.ErrNotExist) {
			// Not created yet; the shell creates it before the command runs.
			return false, nil
		}
		if err != nil {
			return false, err
		}
		f.file = file
	}
	grew := false
	for {
		n, err := f.file.ReadAt(f.buf, f.offset+int64(len(f.pending)))
		if n > 0 {
			grew = true
			if err := f.lines(f.buf[:n]); err != nil {
				return grew, err
			}
		}
		if err == io.EOF || (err == nil && n < len(f.buf)) {
			break
		}
		if err != nil {
			return grew, err
		}
	}
	if final && len(f.pending) > 0 {
		if err := f.emit(len(f.pending), len(f.pending)); err != nil {
			return grew, err
		}
	}
	return grew, nil
}

// lines appends b to the unfinished line and passes on every complete line.
func (f *follower) lines(b []byte) error {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			f.pending = append(f.pending, b...)
			for len(f.pending) >= maxLine {
				if err := f.emit(maxLine, maxLine); err != nil {
					return err
				}
			}
			return nil
		}
		f.pending = append(f.pending, b[:i+1]...)
		b = b[i+1:]
		if err := f.emit(len(f.pending)-1, len(f.pending)); err != nil {
			return err
		}
	}
	return nil
}

// emit passes on pending[:lineLen] as a line that ends at consumed bytes past offset.
func (f *follower) emit(lineLen, consumed int) error {
	end := f.offset + int64(consumed)
	if err := f.onLine(f.pending[:lineLen], end); err != nil {
		f.callbackErr = true
		return err
	}
	f.offset = end
	f.pending = append(f.pending[:0], f.pending[consumed:]...)
	return nil
}

func (f *follower) exitCode() (int, bool, error) {
	b, err := f.readSmall(path.Join(f.dir, exitCodeFile))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	code, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, false, job.Wrap(job.CodeInternal, err, "follow progress: parse %s", exitCodeFile)
	}
	return code, true, nil
}

// checkAlive fails once the run's process has been gone, with no exit status, for
// lostGrace.
func (f *follower) checkAlive() error {
	alive, err := f.alive()
	if err != nil || alive {
		f.lostSince = time.Time{}
		return err
	}
	if f.lostSince.IsZero() {
		f.lostSince = time.Now()
		return nil
	}
	if time.Since(f.lostSince) < lostGrace {
		return nil
	}
	// Whatever it wrote before it went is passed on first.
	if _, err := f.drain(true); err != nil {
		return err
	}
	if f.pid == 0 {
		return job.Errorf(job.CodeNotFound, "follow progress: no run in %s", f.dir)
	}
	return job.WithReason(job.Wrap(job.CodeFailedPrecondition,
		fmt.Errorf("%w: process %d ended without an exit status", ErrProcessLost, f.pid),
		"follow progress"), job.CodeFailedPrecondition, "process_lost")
}

func (f *follower) alive() (bool, error) {
	if f.pid == 0 {
		b, err := f.readSmall(path.Join(f.dir, pidFile))
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			return false, job.Errorf(job.CodeInternal, "follow progress: bad %s %q", pidFile, b)
		}
		started, err := f.readSmall(path.Join(f.dir, bootIDFile))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
		if f.bootID != "" && err == nil && strings.TrimSpace(string(started)) != f.bootID {
			// The machine rebooted since the run started: the process is gone, whatever
			// now has its id.
			f.rebooted = true
		}
		f.pid = pid
	}
	if f.rebooted {
		return false, nil
	}
	_, err := f.sc.Stat("/proc/" + strconv.Itoa(f.pid))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// readSmall reads a small remote file whole. Files under /proc report size 0, so it reads
// until end of file rather than by size.
func (f *follower) readSmall(name string) ([]byte, error) {
	file, err := f.sc.Open(name)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	var out []byte
	b := make([]byte, 4096)
	for {
		n, err := file.Read(b)
		out = append(out, b[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if len(out) > 64<<10 {
			return nil, fmt.Errorf("%s: larger than 64 KiB", name)
		}
	}
}
