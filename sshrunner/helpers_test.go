package sshrunner_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// killRunAtCleanup ends, when t ends, whatever run Start left in dir: the process group in
// dir/pid and its supervising shell, each by id after checking /proc.
func killRunAtCleanup(t testing.TB, dir string) {
	t.Cleanup(func() { killRun(t, dir) })
}

func killRun(t testing.TB, dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Errorf("bad pid file in %s: %q", dir, b)
		return
	}
	if sup := parentOf(pid); sup > 1 {
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", sup)); err == nil && bytes.Contains(cmdline, []byte("exit_code")) {
			_ = syscall.Kill(sup, syscall.SIGKILL)
		}
	}
	// The run leads its own process group; only signal it while it does.
	if pgid, err := syscall.Getpgid(pid); err == nil && pgid == pid {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// parentOf returns the parent process id of pid, or 0.
func parentOf(pid int) int {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// waitFile waits until name exists.
func waitFile(t testing.TB, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(name); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// proxy forwards TCP connections to a target and can cut them all, to simulate a network
// failure under an SSH connection; with a delay, it holds every byte that long in each
// direction, to simulate a long network path.
type proxy struct {
	l      net.Listener
	target string
	delay  time.Duration

	mu     sync.Mutex
	conns  []net.Conn
	frozen bool
	wg     sync.WaitGroup
}

func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	return startDelayProxy(t, target, 0)
}

func startDelayProxy(t testing.TB, target string, delay time.Duration) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target, delay: delay}
	t.Cleanup(p.close)
	p.wg.Add(1)
	go p.serve()
	return p
}

func (p *proxy) port() int { return p.l.Addr().(*net.TCPAddr).Port }

// accepted is how many connections the proxy has forwarded.
func (p *proxy) accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) / 2
}

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		p.wg.Add(2)
		if p.delay > 0 {
			go func() { defer p.wg.Done(); p.delayed(u, c) }()
			go func() { defer p.wg.Done(); p.delayed(c, u) }()
			continue
		}
		go func() { defer p.wg.Done(); p.copy(u, c); u.Close() }()
		go func() { defer p.wg.Done(); p.copy(c, u); c.Close() }()
	}
}

// copy forwards src to dst, dropping what arrives while the proxy is frozen.
func (p *proxy) copy(dst io.Writer, src io.Reader) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		frozen := p.frozen
		p.mu.Unlock()
		if n > 0 && !frozen {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// delayed copies src to dst, each read delivered p.delay after it arrived: a user-space
// stand-in for netem's delay. Reads queue up (bounded) while earlier ones wait, so the delay
// is not added per read.
func (p *proxy) delayed(dst, src net.Conn) {
	type chunk struct {
		due  time.Time
		data []byte
	}
	queue := make(chan chunk, 1<<14)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(queue)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				queue <- chunk{time.Now().Add(p.delay), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range queue {
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(c.data); err != nil {
			src.Close()
			// Drain, so that the reader is never left blocked on a full queue.
			for range queue {
			}
			return
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		dst.Close()
	}
}

// freeze makes the network silent without closing anything, as a dead path does.
func (p *proxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.frozen = true
}

// cut closes every connection made so far.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) close() {
	p.l.Close()
	p.cut()
	p.wg.Wait()
}
