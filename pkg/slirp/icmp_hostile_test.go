package slirp

import (
	"net/netip"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// pingNetns moves the test's goroutine, for good, into a network
// namespace of its own whose loopback is up and whose ping_group_range
// lets anyone open ping sockets: the engine's echo sockets then reach
// nothing but that loopback. The thread is never unlocked, so the
// runtime ends it, and the namespace with it, when the test is over.
func pingNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a network namespace")
	}
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("no network namespace: %v", err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		t.Fatal(err)
	}
	// /proc/sys/net is the opening thread's namespace's.
	if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0); err != nil {
		t.Fatal(err)
	}
}

// needPing makes sure the engine can open ping sockets: where the host
// allows none, it moves the test into a namespace that does (pingNetns).
func needPing(t *testing.T) {
	t.Helper()
	if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP); err == nil {
		unix.Close(fd)
		return
	}
	pingNetns(t)
}

// echoRequest is an ICMP (typ 8) or ICMPv6 (typ 128) echo request.
func echoRequest(typ uint8, id, seq uint16) []byte {
	return []byte{typ, 0, 0, 0, byte(id >> 8), byte(id), byte(seq >> 8), byte(seq), 'p', 'i', 'n', 'g'}
}

// TestICMPEchoTypeOfOtherFamily: ICMPv6's echo type (128) in an ICMP
// message, or ICMP's (8) in an ICMPv6 one, is no echo request. It is
// counted as unhandled and opens no ping socket: a socket opened for it
// took a descriptor and a place under --max-icmp for a minute, for a
// request the kernel then refuses to send (EINVAL), counted nowhere.
func TestICMPEchoTypeOfOtherFamily(t *testing.T) {
	pingNetns(t)
	te := newTestEngine(t)
	te.cfg.NoICMP = false
	unhandled := te.Stats.Unhandled
	te.tapInput(frameIP(testGuest4, testGW4, header.ProtoICMP, echoRequest(header.ICMPv6Echo, 1, 1)))
	te.tapInput(frameIP(testGuest6, testGW6, header.ProtoICMPv6, echoRequest(header.ICMPv4Echo, 2, 1)))
	te.inputDone()
	if te.icmp.count != 0 {
		t.Errorf("%d ICMP flows opened for echo types of the other family, want 0", te.icmp.count)
	}
	if got := te.Stats.Unhandled - unhandled; got != 2 {
		t.Errorf("%d messages counted as unhandled, want 2", got)
	}
}

// TestICMPEchoFlood: a guest that pings with ever new identifiers, from
// both families, gets at most --max-icmp ping sockets, one descriptor
// each; past the cap each new identifier gets an "administratively
// prohibited" error. An echo to a link-local address not ours gets
// "unreachable" and no socket. When the flows expire every socket is
// closed, replies still in them or not, and the guest may ping again.
func TestICMPEchoFlood(t *testing.T) {
	pingNetns(t)
	te := newTestEngine(t)
	te.cfg.NoICMP = false
	te.cfg.MaxICMP = 8
	before := openFds(t)

	te.tapInput(frameIP(testGuest6, netip.MustParseAddr("fe80::99"), header.ProtoICMPv6, echoRequest(header.ICMPv6Echo, 7, 1)))
	if te.icmp.count != 0 {
		t.Fatalf("%d ICMP flows for an echo to a link-local address not ours, want 0", te.icmp.count)
	}
	te.output(t)

	const ids = 64
	for id := range uint16(ids) {
		te.tapInput(frameIP(testGuest4, testGW4, header.ProtoICMP, echoRequest(header.ICMPv4Echo, id, 1)))
		te.tapInput(frameIP(testGuest6, testGW6, header.ProtoICMPv6, echoRequest(header.ICMPv6Echo, id, 1)))
	}
	te.inputDone()
	if te.icmp.count != te.cfg.MaxICMP {
		t.Fatalf("%d ICMP flows, want the cap, %d", te.icmp.count, te.cfg.MaxICMP)
	}
	if n := len(leakedFds(t, before)); n != te.cfg.MaxICMP {
		t.Errorf("%d new descriptors, want one a flow, %d", n, te.cfg.MaxICMP)
	}
	prohibited := 0
	for _, f := range te.output(t) {
		eth := header.Ethernet(f)
		var m header.ICMP
		if eth.Type() == header.EtherTypeIPv4 {
			m = header.ICMP(header.IPv4(eth.Payload()).Payload())
			if m.Type() == header.ICMPv4Unreachable && m.Code() == header.ICMPv4AdminProhibited {
				prohibited++
			}
		} else if ip := header.IPv6(eth.Payload()); ip.NextHeader() == header.ProtoICMPv6 {
			m = header.ICMP(ip.Payload())
			if m.Type() == header.ICMPv6Unreachable && m.Code() == header.ICMPv6AdminProhibited {
				prohibited++
			}
		}
	}
	if want := 2*ids - te.cfg.MaxICMP; prohibited != want {
		t.Errorf("%d prohibited errors, want one for each identifier past the cap, %d", prohibited, want)
	}

	// The replies wait in the sockets; the flows expire first.
	te.start = te.start.Add(-2 * icmpIdle)
	te.lastTick = 0
	te.turn(0)
	if te.icmp.count != 0 {
		t.Fatalf("%d ICMP flows left after they expired", te.icmp.count)
	}
	if leaked := leakedFds(t, before); len(leaked) != 0 {
		t.Errorf("descriptors left after the flows expired: %v", leaked)
	}
	te.tapInput(frameIP(testGuest4, testGW4, header.ProtoICMP, echoRequest(header.ICMPv4Echo, 1000, 1)))
	te.inputDone()
	if te.icmp.count != 1 {
		t.Errorf("%d ICMP flows after the guest pinged again, want 1", te.icmp.count)
	}
}

// TestICMPEchoToMappedAddress: an ICMPv6 echo to an IPv4-mapped address,
// which an ICMPv6 ping socket refuses to send to (EINVAL), gets "no
// route" at once, as one to a link-local address not ours does, and
// opens no ping socket: one opened took a descriptor and a place under
// --max-icmp for a minute, and the guest heard nothing.
func TestICMPEchoToMappedAddress(t *testing.T) {
	needPing(t)
	te := newTestEngine(t)
	te.cfg.NoICMP = false
	for _, dst := range []string{"::ffff:198.51.100.1", "::ffff:192.0.2.9"} {
		te.tapInput(frameIP(testGuest6, netip.MustParseAddr(dst), header.ProtoICMPv6, echoRequest(header.ICMPv6Echo, 3, 1)))
		te.inputDone()
		if te.icmp.count != 0 {
			t.Fatalf("%s: %d ICMP flows, want 0", dst, te.icmp.count)
		}
		out := te.output(t)
		if len(out) != 1 {
			t.Fatalf("%s: %d frames to the guest, want one error", dst, len(out))
		}
		ip := header.IPv6(header.Ethernet(out[0]).Payload())
		if m := header.ICMP(ip.Payload()); ip.NextHeader() != header.ProtoICMPv6 ||
			m.Type() != header.ICMPv6Unreachable || m.Code() != header.ICMPv6NoRoute {
			t.Errorf("%s: the guest got % x, want ICMPv6 no route", dst, ip.Payload())
		}
	}
}

// TestICMPEchoPastMTU: an echo reply longer than the guest's MTU
// reaches it in IP fragments within the MTU, as a router would send it,
// not cut to the MTU (a ping socket reports the length it cut a reply
// to) nor dropped; one that fits arrives whole.
func TestICMPEchoPastMTU(t *testing.T) {
	needPing(t)
	te := newTestEngine(t)
	te.cfg.NoICMP = false
	te.setMTU(576)
	for i, size := range []int{576 - header.IPv4MinLen, 577 - header.IPv4MinLen} {
		echo := append(echoRequest(header.ICMPv4Echo, uint16(7+i), uint16(size)), make([]byte, size-12)...)
		te.tapInput(frameIP(testGuest4, testGW4, header.ProtoICMP, echo)) // the gateway: host loopback
		te.inputDone()
		var frames [][]byte
		var got []byte
		for deadline := time.Now().Add(5 * time.Second); got == nil && time.Now().Before(deadline); {
			te.turn(10)
			checkedFrames(t, te, func(f []byte) {
				ip := header.IPv4(f[header.EthernetLen:])
				if header.Ethernet(f).Type() != header.EtherTypeIPv4 || ip.Protocol() != header.ProtoICMP {
					return
				}
				if len(f)-header.EthernetLen > 576 {
					t.Errorf("echo of %d bytes: a frame of %d bytes past the MTU", size, len(f))
				}
				if !ip.IsFragment() {
					got = ip.Payload()
				}
				frames = append(frames, slices.Clone(f))
			})
			if got == nil {
				got = reassemble(t, frames, testGW4, testGuest4, header.ProtoICMP)
			}
		}
		fits := size+header.IPv4MinLen <= 576
		if len(got) != size || fits != (len(frames) == 1) || te.Stats.Dropped != 0 {
			t.Errorf("echo of %d bytes: a reply of %d bytes in %d frames, %d dropped", size, len(got), len(frames), te.Stats.Dropped)
		}
	}
}
