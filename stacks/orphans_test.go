package stacks

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A plugin whose engine is gone (reparented after its CLI died) is ended; one still under
// a `pulumi` CLI, as an operator's would be, is left alone.
func TestEndOrphanedPlugins(t *testing.T) {
	home := t.TempDir()
	dir := filepath.Join(home, "plugins", "resource-fake-v1.0.0")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	plugin := filepath.Join(dir, "pulumi-resource-fake")
	copyFile(t, "/bin/sleep", plugin)
	// A stand-in CLI named pulumi: a shell that runs the plugin as its child (the
	// trailing command keeps the shell from exec'ing it).
	cli := filepath.Join(t.TempDir(), "pulumi")
	copyFile(t, "/bin/sh", cli)

	// The orphan: its shell parent exits at once, leaving it to be reparented.
	out, err := exec.Command("/bin/sh", "-c", plugin+" 120 >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	orphan, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	t.Cleanup(func() { syscall.Kill(orphan, syscall.SIGKILL) })
	// The live one: still under its CLI.
	live := exec.Command(cli, "-c", plugin+" 120; :")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-live.Process.Pid, syscall.SIGKILL)
		live.Process.Kill()
		live.Wait()
	})
	var child int
	deadline := time.Now().Add(10 * time.Second)
	for child == 0 || argv0(orphan) != plugin {
		if time.Now().After(deadline) {
			t.Fatalf("the stand-in plugins did not start (orphan %d, child %d)", orphan, child)
		}
		child = childOf(live.Process.Pid)
		time.Sleep(20 * time.Millisecond)
	}

	// A CLI of this home orphaned with its plugin still under it: both are ended.
	out, err = exec.Command("/bin/sh", "-c", "PULUMI_HOME="+home+" "+cli+" -c '"+plugin+" 120; :' >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	orphanCLI, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	t.Cleanup(func() { syscall.Kill(orphanCLI, syscall.SIGKILL) })
	var orphanCLIPlugin int
	for orphanCLIPlugin == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the orphaned stand-in CLI did not start its plugin")
		}
		orphanCLIPlugin = childOf(orphanCLI)
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() { syscall.Kill(orphanCLIPlugin, syscall.SIGKILL) })

	ended := endOrphanedPlugins(home, slog.New(slog.NewTextHandler(io.Discard, nil)))
	slices.Sort(ended)
	want := []int{orphan, orphanCLI, orphanCLIPlugin}
	slices.Sort(want)
	if !slices.Equal(ended, want) {
		t.Fatalf("ended %v, want the orphans %v (the live plugin is %d)", ended, want, child)
	}
	if argv0(child) != plugin {
		t.Fatalf("the plugin under its CLI was ended")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	raw, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, raw, 0o700); err != nil {
		t.Fatal(err)
	}
}

// childOf returns a child of pid, or 0.
func childOf(pid int) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, ok := parentPid(p); ok && ppid == pid {
			return p
		}
	}
	return 0
}
