package rtnl

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// neighMsg builds a neighbour message: an RTM_NEWNEIGH (or RTM_DELNEIGH
// if del) for a on interface index, with lladdr unless nil.
func neighMsg(del bool, a netip.Addr, index int, state uint16, typ uint8, lladdr []byte) []byte {
	family := unix.AF_INET6
	if a.Is4() {
		family = unix.AF_INET
	}
	body := make([]byte, unix.SizeofNdMsg)
	*(*unix.NdMsg)(unsafe.Pointer(&body[0])) = unix.NdMsg{Family: uint8(family), Ifindex: int32(index), State: state, Type: typ}
	body = attr(body, unix.NDA_DST, a.AsSlice())
	if lladdr != nil {
		body = attr(body, unix.NDA_LLADDR, lladdr)
	}
	t := uint16(unix.RTM_NEWNEIGH)
	if del {
		t = unix.RTM_DELNEIGH
	}
	h := make([]byte, unix.SizeofNlMsghdr)
	binary.NativeEndian.PutUint32(h, uint32(len(h)+len(body)))
	binary.NativeEndian.PutUint16(h[4:], t)
	return append(h, body...)
}

// FuzzNeigh: any bytes as a dump's answer or changes heard, never a
// panic or a hang, and every entry handed on has an address of its
// message's family and a MAC only at six bytes. The seeds are a real
// dump of a namespace's neighbours and real changes.
func FuzzNeigh(f *testing.F) {
	f.Add(neighMsg(false, netip.MustParseAddr("192.0.2.1"), 2, unix.NUD_REACHABLE, unix.RTN_UNICAST, []byte{2, 0, 0, 0, 0, 1}))
	f.Add(neighMsg(true, netip.MustParseAddr("2001:db8::1"), 2, unix.NUD_FAILED, unix.RTN_UNICAST, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseNeighs(b, func(n Neigh) {
			if !n.Addr.IsValid() || n.Addr.Zone() != "" {
				t.Fatalf("entry without a plain address: %+v", n)
			}
			if n.MACLen != 6 && n.MAC != [6]byte{} {
				t.Fatalf("a MAC from a %d-byte address: %+v", n.MACLen, n)
			}
		})
	})
}

// What a message says, and whether its MAC is one to use (Ethernet):
// valid states only, unicast only, six bytes only; a deletion never.
func TestParseNeigh(t *testing.T) {
	mac := []byte{2, 0, 0, 0, 0, 9}
	a4, a6 := netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("fe80::9")
	for _, c := range []struct {
		name string
		msg  []byte
		want bool
	}{
		{"reachable", neighMsg(false, a4, 3, unix.NUD_REACHABLE, unix.RTN_UNICAST, mac), true},
		{"permanent6", neighMsg(false, a6, 3, unix.NUD_PERMANENT, unix.RTN_UNICAST, mac), true},
		{"stale", neighMsg(false, a4, 3, unix.NUD_STALE, unix.RTN_UNICAST, mac), true},
		{"incomplete", neighMsg(false, a4, 3, unix.NUD_INCOMPLETE, unix.RTN_UNICAST, nil), false},
		{"failed", neighMsg(false, a4, 3, unix.NUD_FAILED, unix.RTN_UNICAST, mac), false},
		{"deleted", neighMsg(true, a4, 3, unix.NUD_REACHABLE, unix.RTN_UNICAST, mac), false},
		{"broadcast", neighMsg(false, a4, 3, unix.NUD_REACHABLE, unix.RTN_BROADCAST, mac), false},
		{"short-mac", neighMsg(false, a4, 3, unix.NUD_REACHABLE, unix.RTN_UNICAST, mac[:4]), false},
	} {
		var got []Neigh
		done, err := ParseNeighs(c.msg, func(n Neigh) { got = append(got, n) })
		if err != nil || done || len(got) != 1 {
			t.Errorf("%s: %d entries, done %v, %v", c.name, len(got), done, err)
			continue
		}
		n := got[0]
		if n.Index != 3 || n.Addr != a4 && n.Addr != a6 {
			t.Errorf("%s: %+v", c.name, n)
		}
		if m, ok := n.Ethernet(); ok != c.want || ok && !bytes.Equal(m[:], mac) {
			t.Errorf("%s: Ethernet() = %v %v, want %v", c.name, m, ok, c.want)
		}
	}
	// An address of the other family's length is none: no entry.
	bad := neighMsg(false, a4, 3, unix.NUD_REACHABLE, unix.RTN_UNICAST, mac)
	bad[16] = unix.AF_INET6
	if _, err := ParseNeighs(bad, func(n Neigh) { t.Errorf("entry from a mislabelled address: %+v", n) }); err != nil {
		t.Error(err)
	}
	// An attribute longer than its message ends the parse.
	cut := neighMsg(false, a4, 3, unix.NUD_REACHABLE, unix.RTN_UNICAST, mac)
	binary.NativeEndian.PutUint16(cut[unix.SizeofNlMsghdr+unix.SizeofNdMsg:], 200)
	if _, err := ParseNeighs(cut, func(Neigh) {}); err != ErrTruncated {
		t.Errorf("an attribute past its message: %v, want ErrTruncated", err)
	}
}

// seed reads the checked-in seed name of the fuzz target target.
func seed(t *testing.T, target, name string) []byte {
	b, err := os.ReadFile(filepath.Join("testdata", "fuzz", target, name))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	q, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
	if err != nil {
		t.Fatal(err)
	}
	return []byte(q)
}

// The checked-in seeds, a real dump of a namespace's neighbours and the
// changes it heard after (as TestNeighLive makes them), parse into what
// made them.
func TestParseNeighSeeds(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the seeds were taken on a little-endian machine; netlink is in the host's byte order")
	}
	for _, c := range []struct {
		name string
		want []string
	}{
		{"dump4", []string{"192.0.2.1 02:00:00:00:00:01 true", "192.0.2.2 02:00:00:00:00:02 true"}},
		{"dump6", []string{"2001:db8::1 02:00:00:00:00:03 true", "fe80::1 02:00:00:00:00:04 true"}},
		{"changes", []string{"192.0.2.1 02:00:00:00:00:05 true", "192.0.2.2 00:00:00:00:00:00 false"}},
	} {
		got := neighLines(t, seed(t, "FuzzNeigh", c.name))
		for _, w := range c.want {
			if !slices.Contains(got, w) {
				t.Errorf("%s parses into %q, without %q", c.name, got, w)
			}
		}
	}
}

// neighLines parses b into a line per entry: address, MAC, usable.
func neighLines(t *testing.T, b []byte) []string {
	var got []string
	if _, err := ParseNeighs(b, func(n Neigh) { got = append(got, neighLine(n)) }); err != nil {
		t.Fatal(err)
	}
	return got
}

func neighLine(n Neigh) string {
	mac, ok := n.Ethernet()
	return fmt.Sprintf("%v %v %v", n.Addr, net.HardwareAddr(mac[:]), ok)
}

// The kernel's own: a dump of a namespace's neighbours on its interface,
// for each family, then the changes the socket hears, a MAC replaced and
// an entry deleted.
func TestNeighLive(t *testing.T) {
	inNetns(t, func(ifi int) {
		c, err := OpenNeigh(ifi, ifi)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i, a := range []string{"192.0.2.1", "192.0.2.2", "2001:db8::1", "fe80::1"} {
			runIP(t, "neigh", "replace", a, "lladdr", fmt.Sprintf("02:00:00:00:00:%02x", i+1), "dev", "d0", "nud", "permanent")
		}
		var got []string
		for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
			if err := c.DumpNeighs(family, ifi, func(n Neigh) {
				if n.Index == ifi {
					got = append(got, neighLine(n))
				}
			}); err != nil {
				t.Fatal(err)
			}
		}
		for _, w := range []string{"192.0.2.1 02:00:00:00:00:01 true", "192.0.2.2 02:00:00:00:00:02 true",
			"2001:db8::1 02:00:00:00:00:03 true", "fe80::1 02:00:00:00:00:04 true"} {
			if !slices.Contains(got, w) {
				t.Errorf("the dump has %q, without %q", got, w)
			}
		}
		runIP(t, "neigh", "replace", "192.0.2.1", "lladdr", "02:00:00:00:00:05", "dev", "d0", "nud", "permanent")
		runIP(t, "neigh", "del", "192.0.2.2", "dev", "d0")
		got = nil
		buf := make([]byte, 32<<10)
		for range 100 {
			err := c.ReadNeighs(buf, func(n Neigh) { got = append(got, neighLine(n)) })
			if err == unix.EAGAIN {
				if len(got) >= 2 {
					break
				}
				unix.Poll([]unix.PollFd{{Fd: int32(c.Fd()), Events: unix.POLLIN}}, 50)
			} else if err != nil {
				t.Fatal(err)
			}
		}
		if len(got) < 2 || got[0] != "192.0.2.1 02:00:00:00:00:05 true" || !strings.HasPrefix(got[len(got)-1], "192.0.2.2 ") || strings.HasSuffix(got[len(got)-1], "true") {
			t.Errorf("changes heard: %q, want the new MAC of 192.0.2.1, then 192.0.2.2 gone", got)
		}
	})
}

// inNetns runs fn on a thread in a new network namespace with an
// interface, d0 (a veth), up, whose index it is given: sockets fn opens, and ip
// commands it runs, are there. It needs root.
func inNetns(t *testing.T, fn func(index int)) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a network namespace of its own")
	}
	// Under qemu-user (make test-bigendian), whose kernel is of another
	// architecture than the binary (qemu-user fakes uname, not this file).
	if arch, _ := os.ReadFile("/proc/sys/kernel/arch"); runtime.GOARCH == "s390x" && string(arch) != "s390x\n" {
		t.Skip("qemu-user translates neither a socket filter on netlink nor Go's interface dumps")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Never unlocked: the thread ends with the goroutine, and never
		// comes back to our namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Error(err)
			return
		}
		runIP(t, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
		runIP(t, "link", "set", "d0", "up")
		runIP(t, "addr", "add", "192.0.2.100/24", "dev", "d0")
		runIP(t, "addr", "add", "2001:db8::100/64", "dev", "d0", "nodad")
		out, err := exec.Command("ip", "-o", "link", "show", "d0").Output()
		if err != nil {
			t.Error(err)
			return
		}
		i, _, _ := strings.Cut(string(out), ":")
		ifi, err := strconv.Atoi(i)
		if err != nil || t.Failed() {
			t.Errorf("d0's index in %q: %v", out, err)
			return
		}
		fn(ifi)
	}()
	<-done
}

// runIP runs ip from the calling thread, so in its namespace: a process
// starts in the namespace of the thread that forks it.
func runIP(t *testing.T, args ...string) {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Errorf("ip %v: %v\n%s", args, err, out)
	}
}

// Changes the socket could not hold before a dump (ENOBUFS, which a read
// reports once the queue is empty, amid the dump's answer) do not end
// the dump: it is read to its end, its entries given, and the loss
// reported after them.
func TestNeighDumpOverrun(t *testing.T) {
	inNetns(t, func(ifi int) {
		c, err := OpenNeigh(ifi, ifi)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The smallest buffer the kernel allows: a few changes fill it.
		if err := unix.SetsockoptInt(c.Fd(), unix.SOL_SOCKET, unix.SO_RCVBUF, 0); err != nil {
			t.Fatal(err)
		}
		const n = 90 // below d0's own 192.0.2.100
		var batch strings.Builder
		for i := range n {
			fmt.Fprintf(&batch, "neigh replace 192.0.2.%d lladdr 02:00:00:00:00:%02x dev d0 nud permanent\n", i+1, i+1)
		}
		ip := exec.Command("ip", "-batch", "-")
		ip.Stdin = strings.NewReader(batch.String())
		if out, err := ip.CombinedOutput(); err != nil {
			t.Fatalf("ip -batch: %v\n%s", err, out)
		}
		got := map[netip.Addr]bool{}
		err = c.DumpNeighs(unix.AF_INET, ifi, func(nb Neigh) {
			if _, ok := nb.Ethernet(); ok && nb.Index == ifi {
				got[nb.Addr] = true
			}
		})
		if err != unix.ENOBUFS {
			t.Errorf("the dump after an overrun: %v, want ENOBUFS", err)
		}
		if len(got) != n {
			t.Errorf("the dump gave %d entries, want %d", len(got), n)
		}
		// The dump is over: another works.
		if err := c.DumpNeighs(unix.AF_INET, ifi, func(Neigh) {}); err != nil {
			t.Errorf("the next dump: %v", err)
		}
	})
}

// The socket takes in IPv4 and IPv6 neighbour messages and the ends of
// answers alone, for good: a compromised engine that asks it for the
// host's links or addresses, or joins it to their groups, hears nothing
// of them, and cannot take the filter off; and a bridge's forwarding
// entries, which share the neighbour group and which a host on a bridged
// link sets off with every source MAC it makes up, never wake it.
func TestNeighOnlyNeighbours(t *testing.T) {
	inNetns(t, func(ifi int) {
		c, err := OpenNeigh(ifi, ifi)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := unix.SetsockoptInt(c.Fd(), unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, unix.RTNLGRP_LINK); err != nil {
			t.Fatal(err)
		}
		for _, typ := range []uint16{unix.RTM_GETLINK, unix.RTM_GETADDR} {
			if _, err := c.send(typ, unix.NLM_F_DUMP, make([]byte, unix.SizeofIfInfomsg)); err != nil {
				t.Fatal(err)
			}
		}
		runIP(t, "link", "set", "d0", "mtu", "1400")
		runIP(t, "link", "add", "br0", "type", "bridge")
		runIP(t, "link", "add", "d2", "master", "br0", "type", "veth", "peer", "name", "d3")
		for i := range 10 {
			if out, err := exec.Command("bridge", "fdb", "add", fmt.Sprintf("02:00:00:00:01:%02x", i), "dev", "d2", "master", "static").CombinedOutput(); err != nil {
				t.Fatalf("bridge fdb add: %v\n%s", err, out)
			}
		}
		buf := make([]byte, 32<<10)
		for {
			n, _, err := unix.Recvfrom(c.Fd(), buf, unix.MSG_DONTWAIT)
			if err != nil {
				break
			}
			scan(buf[:n], 0, func(typ uint16, body []byte) {
				if typ != unix.RTM_NEWNEIGH && typ != unix.RTM_DELNEIGH {
					t.Errorf("heard message type %d", typ)
				} else if body[0] != unix.AF_INET && body[0] != unix.AF_INET6 {
					t.Errorf("heard a neighbour of family %d", body[0])
				}
			})
		}
		if err := unix.SetsockoptInt(c.Fd(), unix.SOL_SOCKET, unix.SO_DETACH_FILTER, 0); err != unix.EPERM {
			t.Errorf("taking the filter off: %v, want EPERM", err)
		}
	})
}

// The socket hears the template interfaces alone: a dump gives their
// entries, and neither it nor a change brings another interface's, which
// a busy host (containers' veths) would otherwise wake the engine for,
// and overrun its socket with.
func TestNeighOtherInterface(t *testing.T) {
	inNetns(t, func(ifi int) {
		runIP(t, "link", "set", "d1", "up")
		c, err := OpenNeigh(ifi, ifi)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		runIP(t, "neigh", "replace", "192.0.2.1", "lladdr", "02:00:00:00:00:01", "dev", "d0", "nud", "permanent")
		runIP(t, "neigh", "replace", "192.0.2.2", "lladdr", "02:00:00:00:00:02", "dev", "d1", "nud", "permanent")
		runIP(t, "neigh", "replace", "2001:db8::2", "lladdr", "02:00:00:00:00:02", "dev", "d1", "nud", "permanent")
		var got []string
		heard := func(n Neigh) { got = append(got, fmt.Sprintf("%v %d", n.Addr, n.Index)) }
		for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
			if err := c.DumpNeighs(family, ifi, heard); err != nil {
				t.Fatal(err)
			}
		}
		for c.ReadNeighs(make([]byte, 32<<10), heard) == nil {
		}
		for _, l := range got {
			if !strings.HasSuffix(l, fmt.Sprintf(" %d", ifi)) {
				t.Errorf("heard another interface's entry: %s", l)
			}
		}
		if !slices.Contains(got, fmt.Sprintf("192.0.2.1 %d", ifi)) {
			t.Errorf("heard %q, without d0's entry", got)
		}
	})
}

// A dump is read to its end whatever interface it brings, as one from a
// kernel that does not filter dumps by interface would: the filter keeps
// answers to our requests whole, or the datagram holding NLMSG_DONE
// could be dropped and the dump wait for it for ever.
func TestNeighDumpEnds(t *testing.T) {
	inNetns(t, func(ifi int) {
		runIP(t, "link", "set", "d1", "up")
		for i := range 50 {
			runIP(t, "neigh", "replace", fmt.Sprintf("192.0.2.%d", i+1), "lladdr", "02:00:00:00:00:01", "dev", "d1", "nud", "permanent")
		}
		other, err := net.InterfaceByName("d1")
		if err != nil {
			t.Fatal(err)
		}
		c, err := OpenNeigh(ifi, ifi)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		done := make(chan int)
		go func() {
			n := 0
			c.DumpNeighs(unix.AF_INET, other.Index, func(Neigh) { n++ })
			done <- n
		}()
		select {
		case n := <-done:
			if n != 50 {
				t.Errorf("the dump gave %d entries, want 50", n)
			}
		case <-time.After(5 * time.Second):
			c.Close() // ends the read
			t.Fatal("the dump never ended")
		}
	})
}
