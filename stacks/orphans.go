package stacks

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// endOrphanedPlugins ends the Pulumi CLIs and resource plugins of home that a killed
// predecessor left running. A service killed in the middle of an update or destroy leaves
// its CLI reparented, until the CLI dies on its broken output pipe, and the plugin the CLI
// started lives on until its health check of the dead engine fires minutes later; meanwhile
// either may still be in a cloud call, creating or deleting a machine behind the restarted
// service's back. A CLI of home whose parent is init is such an orphan (an operator's runs
// under a shell); so is a plugin whose parent is not a live `pulumi` CLI. It returns the
// pids it signalled.
func endOrphanedPlugins(home string, log *slog.Logger) []int {
	plugins := filepath.Join(home, "plugins") + string(filepath.Separator)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	type proc struct{ pid, ppid int }
	var clis, plugs []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		a := argv0(pid)
		isPlugin := strings.HasPrefix(a, plugins)
		isCLI := filepath.Base(a) == "pulumi" && usesHome(pid, home)
		if !isPlugin && !isCLI {
			continue
		}
		ppid, ok := parentPid(pid)
		if !ok {
			continue
		}
		if isPlugin {
			plugs = append(plugs, proc{pid, ppid})
		} else {
			clis = append(clis, proc{pid, ppid})
		}
	}
	orphanCLI := map[int]bool{}
	var ended []int
	end := func(pid int, what string) {
		log.Warn("ending a Pulumi process left running by a previous instance", "phase", "recover", "pid", pid, "process", what)
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			ended = append(ended, pid)
		}
	}
	for _, c := range clis {
		if c.ppid == 1 {
			orphanCLI[c.pid] = true
			end(c.pid, argv0(c.pid))
		}
	}
	for _, p := range plugs {
		if orphanCLI[p.ppid] || filepath.Base(argv0(p.ppid)) != "pulumi" {
			end(p.pid, argv0(p.pid))
		}
	}
	return ended
}

// usesHome reports whether the process runs with PULUMI_HOME=home.
func usesHome(pid int, home string) bool {
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
	if err != nil {
		return false
	}
	want := []byte("PULUMI_HOME=" + home)
	return slices.ContainsFunc(bytes.Split(raw, []byte{0}), func(kv []byte) bool { return bytes.Equal(kv, want) })
}

// argv0 is the program a process was started as; empty when it cannot be read.
func argv0(pid int) string {
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return ""
	}
	first, _, _ := bytes.Cut(raw, []byte{0})
	return string(first)
}

// parentPid reads a process's parent from /proc/<pid>/stat (the field after the state,
// which follows the parenthesised command name).
func parentPid(pid int) (int, bool) {
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(string(raw[i+1:]))
	if len(fields) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(fields[1])
	return ppid, err == nil
}
