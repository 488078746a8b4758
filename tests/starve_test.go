package tests

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The engine's process has one Go processor (GOMAXPROCS 1) and its loop
// holds it through raw epoll waits: its other goroutines, the control
// socket's server (Engine.Call) and the signal handler, run only when
// the loop passes through the scheduler. These tests keep the loop as
// busy as a guest and a host peer can and time what those goroutines
// serve. The bounds only catch starvation; the times are logged.

// engineFlood keeps the engine busy until stop is closed: a stream
// client sends ARP requests as fast as the engine takes them and, if
// read, reads the replies, and a host peer sends datagrams to a
// forwarded UDP port, which the engine relays to that client. It
// returns a function that ends the flood and tells how many bytes the
// client read.
func engineFlood(t *testing.T, w *World, udpPort string, read bool, stop chan struct{}) func() int64 {
	t.Helper()
	fd := streamDial(t, w.Sock)
	var wg sync.WaitGroup
	var got atomic.Int64
	storm := arpStorm(1000)
	wg.Add(3)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			sendSome(fd, storm)
		}
	}()
	go func() {
		defer wg.Done()
		if !read {
			return // the engine's queue fills and stays full
		}
		b := make([]byte, 1<<20)
		for {
			n, err := unix.Read(fd, b)
			if err == unix.EINTR || err == unix.EAGAIN {
				continue
			}
			if n <= 0 {
				return
			}
			got.Add(int64(n))
		}
	}()
	c, err := w.Host.Dial("udp", "127.0.0.1:"+udpPort, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer wg.Done()
		defer c.Close()
		b := make([]byte, 1400)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.Write(b) // a refusal (ECONNREFUSED) is no reason to stop
		}
	}()
	return func() int64 {
		// The reader ends at the shutdown; closed before, its next
		// read could be of a descriptor opened since.
		unix.Shutdown(fd, unix.SHUT_RDWR)
		wg.Wait()
		unix.Close(fd)
		return got.Load()
	}
}

// ctlTimes runs gopasst ctl list n times and returns how long each took.
func ctlTimes(t *testing.T, w *World, n int) []time.Duration {
	t.Helper()
	var d []time.Duration
	for range n {
		start := time.Now()
		cmd := exec.Command(gopasstBin, "ctl", filepath.Join(w.Dir, "ctl"), "list")
		done := make(chan error, 1)
		var out []byte
		go func() {
			var err error
			out, err = cmd.CombinedOutput()
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("ctl list: %v\n%s", err, out)
			}
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Fatalf("ctl list not served within 5 s")
		}
		d = append(d, time.Since(start))
	}
	return d
}

// durations sums up the times ctlTimes took, for the log.
func durations(d []time.Duration) string {
	s := slices.Clone(d)
	slices.Sort(s)
	return fmt.Sprintf("median %v, max %v", s[len(s)/2].Round(time.Microsecond), s[len(s)-1].Round(time.Microsecond))
}

// TestEngineServesUnderFlood: with a guest flooding the engine with
// frames to answer, whether it reads the answers or not, and a host peer
// with datagrams to relay, the engine answers control requests and exits
// on SIGTERM within 5 s each, as it does when idle.
func TestEngineServesUnderFlood(t *testing.T) {
	for _, read := range []bool{true, false} {
		t.Run(fmt.Sprintf("client reads %v", read), func(t *testing.T) { serveUnderFlood(t, read) })
	}
}

func serveUnderFlood(t *testing.T, read bool) {
	const udpPort = "19210"
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--control", "{dir}/ctl", "-u", udpPort}})
	pid := w.ServerPid(t)
	t.Logf("idle: ctl list %s", durations(ctlTimes(t, w, 10)))

	stop := make(chan struct{})
	end := engineFlood(t, w, udpPort, read, stop)
	cpu0 := procCPU([]int{pid})
	time.Sleep(2 * time.Second)
	cpu := procCPU([]int{pid}) - cpu0
	t.Logf("flooded: ctl list %s; the engine used %.2f s of CPU in 2 s before", durations(ctlTimes(t, w, 20)), cpu)
	if cpu < 0.5 {
		t.Logf("the engine was not kept busy (%.2f s of CPU in 2 s): the times say little", cpu)
	}

	// SIGTERM to the helper, which passes it to the engine, while the
	// flood goes on.
	start := time.Now()
	w.Proc.Process.Signal(syscall.SIGTERM)
	exited := make(chan struct{})
	go func() { w.Proc.Wait(); close(exited) }()
	for alive(pid) {
		if time.Since(start) > 5*time.Second {
			close(stop)
			end()
			t.Fatalf("the engine did not exit within 5 s of SIGTERM under a flood")
		}
		time.Sleep(100 * time.Microsecond)
	}
	engineGone := time.Since(start)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Errorf("the helper did not exit within 5 s of its engine")
	}
	close(stop)
	n := end()
	t.Logf("flooded: SIGTERM to the engine's exit %v, to the helper's %v; the client read %d MiB",
		engineGone.Round(time.Microsecond), time.Since(start).Round(time.Microsecond), n>>20)
}
