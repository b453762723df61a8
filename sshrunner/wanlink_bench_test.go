package sshrunner_test

import (
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A delay line in user space that TCP sees: two TUN devices, one in this namespace and one
// moved into the benchmark's network namespace, joined by this process, which writes every
// IP packet read from one device to the other once it would have crossed a link of the
// given rate and one-way delay. Unlike the TCP relay of UNDERSTUDY_WAN_DELAY=proxy it leaves
// each connection end to end, so TCP's congestion control and windows see the round trip,
// as they do with netem. Like netem's "delay 20ms rate 1gbit limit 100000", a packet waits
// behind the ones before it for the rate, then for the delay, and is dropped when 100,000
// are queued.
const (
	tunMTU        = 1500
	tunQueueLimit = 100000
)

// tunLink is the delay line's two devices and its four goroutines.
type tunLink struct {
	devs  [2]*os.File
	wg    sync.WaitGroup
	drops atomic.Int64
	sent  atomic.Int64
}

// openTUN creates the TUN device name (IP packets, no packet information header) and
// returns it open, non-blocking so that Close ends a pending read. The device goes away
// when the file is closed.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// startTUNLink creates the devices a and b in this namespace (the caller moves b and
// configures both) and starts moving packets both ways, each way at rate bytes per second
// and delayed by delay. Everything stops and the devices go away when tb ends.
func startTUNLink(tb testing.TB, a, b string, rate float64, delay time.Duration) *tunLink {
	tb.Helper()
	l := &tunLink{}
	// Registered first, so that a device made before a failure goes away too.
	tb.Cleanup(func() {
		for _, f := range l.devs {
			if f != nil {
				_ = f.Close()
			}
		}
		l.wg.Wait()
		tb.Logf("delay line: %d packets moved, %d dropped at its queue limit", l.sent.Load(), l.drops.Load())
	})
	for i, name := range []string{a, b} {
		f, err := openTUN(name)
		if err != nil {
			tb.Fatalf("create TUN device %s (/dev/net/tun): %v", name, err)
		}
		l.devs[i] = f
	}
	l.pump(l.devs[0], l.devs[1], rate, delay)
	l.pump(l.devs[1], l.devs[0], rate, delay)
	return l
}

type tunPacket struct {
	buf *[]byte
	n   int
	at  time.Time // when it reaches the far end
}

// pump moves packets from one device to the other: a reader that stamps each packet with
// the time it would arrive, and a writer that delivers them in order at those times.
func (l *tunLink) pump(from, to *os.File, rate float64, delay time.Duration) {
	pool := sync.Pool{New: func() any { b := make([]byte, tunMTU+64); return &b }}
	queue := make(chan tunPacket, tunQueueLimit)
	l.wg.Go(func() {
		defer close(queue)
		var txEnd time.Time // when the link finishes sending what it has queued
		for {
			buf := pool.Get().(*[]byte)
			n, err := from.Read(*buf)
			if err != nil {
				// Reads of a TUN device fail only once it is closed or gone.
				pool.Put(buf)
				return
			}
			now := time.Now()
			if txEnd.Before(now) {
				txEnd = now
			}
			txEnd = txEnd.Add(time.Duration(float64(n) / rate * float64(time.Second)))
			select {
			case queue <- tunPacket{buf: buf, n: n, at: txEnd.Add(delay)}:
			default:
				l.drops.Add(1)
				pool.Put(buf)
			}
		}
	})
	l.wg.Go(func() {
		for p := range queue {
			if d := time.Until(p.at); d > 0 {
				time.Sleep(d)
			}
			// A write fails only once the device is closed; the reader then ends too.
			if _, err := to.Write((*p.buf)[:p.n]); err == nil {
				l.sent.Add(1)
			}
			pool.Put(p.buf)
		}
	})
}
