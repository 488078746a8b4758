package slirp

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"golang.org/x/sys/unix"
)

// A forward's IPv6 socket takes IPv4 too only when the forward names no
// address and -6 is not given: "::" named, as passt takes it, is IPv6
// alone. (UDP, port 0, closed at once: nothing listens.)
func TestBindV6Only(t *testing.T) {
	for _, c := range []struct {
		name  string
		only6 bool
		addr  netip.Addr
		want  int
	}{
		{"no address", false, netip.Addr{}, 0},
		{"no address, -6", true, netip.Addr{}, 1},
		{"::", false, netip.IPv6Unspecified(), 1},
		{"::1", false, netip.IPv6Loopback(), 1},
	} {
		h := &LocalHost{Only6: c.only6}
		fd, err := h.Bind(UDP, portspec.Forward{Addr: c.addr})
		if err != nil {
			t.Skipf("%s: %v", c.name, err) // no IPv6 here
		}
		only, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		unix.Close(fd)
		if err != nil || only != c.want {
			t.Errorf("%s: IPV6_V6ONLY %d (%v), want %d", c.name, only, err, c.want)
		}
	}
}

// TestEndCommandStopsItsChildren: a command forward's connection that
// ends stops what the command started too, not the command alone. A
// shell's child outlived it, out of --cmd-fwd-max's count: a guest
// opening and closing connections to `sh -c 'sleep 600; ...'` piled up
// sleeps without bound.
func TestEndCommandStopsItsChildren(t *testing.T) {
	h := &LocalHost{}
	h.SetSpecial(7000, &Special{Argv: []string{"/bin/sh", "-c", "sleep 600 & echo $!; wait"}})
	fd, err := h.DialSpecial(7000)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	unix.SetNonblock(fd, false)
	buf := make([]byte, 32)
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		t.Fatalf("the command's child: %q: %v", buf[:n], err)
	}
	defer unix.Kill(child, unix.SIGKILL)
	h.EndCommand(fd)
	// Gone, or a zombie its new parent has not reaped yet.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil || strings.Contains(string(stat), ") Z ") {
			return
		}
	}
	t.Fatal("the command's child still runs 10 s after its connection ended")
}

// TestEndCommandAfterItsNumberIsReused: a command forward's command that
// has exited, with nothing left of its group, leaves its number free; a
// stranger that then leads a group by that number (pid_max is often
// 32768) must not get the SIGTERM that the connection's end sends.
// gopasst signalled the group by number, and ended the stranger's. The
// stranger gets the number through ns_last_pid, which needs root.
func TestEndCommandAfterItsNumberIsReused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: writes /proc/sys/kernel/ns_last_pid")
	}
	h := &LocalHost{}
	h.SetSpecial(7000, &Special{Argv: []string{"/bin/true"}})
	fd, err := h.DialSpecial(7000)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	c := h.procs[fd]
	if c.pidfd < 0 {
		t.Skip("no pidfd here (qemu-user): a group is signalled by number")
	}
	for deadline := time.Now().Add(10 * time.Second); !c.Gone(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("/bin/true's group still there after 10 s")
		}
	}
	// The stranger leads a session of its own, as a login's shell does.
	var stranger *os.Process
	for try := 0; try < 50 && stranger == nil; try++ {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(c.pid-1)), 0); err != nil {
			t.Skipf("ns_last_pid: %v", err)
		}
		p, err := os.StartProcess("/bin/sleep", []string{"sleep", "60"},
			&os.ProcAttr{Sys: &syscall.SysProcAttr{Setsid: true}})
		if err != nil {
			t.Fatal(err)
		}
		if p.Pid == c.pid {
			stranger = p
			break
		}
		p.Kill()
		p.Wait()
	}
	if stranger == nil {
		t.Skipf("no process got the number %d again in 50 tries", c.pid)
	}
	defer func() { stranger.Kill(); stranger.Wait() }()
	if !c.Gone() {
		t.Error("the command's group counts as there: its number leads a stranger's")
	}
	h.EndCommand(fd)
	time.Sleep(100 * time.Millisecond)
	var ws unix.WaitStatus
	if pid, _ := unix.Wait4(stranger.Pid, &ws, unix.WNOHANG, nil); pid == stranger.Pid {
		t.Fatalf("the stranger, %d, ended with the command's connection: %v", stranger.Pid, ws.Signal())
	}
}
