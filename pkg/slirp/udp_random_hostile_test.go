package slirp

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/gopasst/gopasst/pkg/slirp/header"
)

// TestUDPICMPRandom plays a guest that mixes, at random, datagrams of
// either family from a few dozen ports, with odd TTLs, odd headers and
// sizes past its own MTU, to an echoing peer, to closed ports and to
// addresses no socket reaches; echo requests; stalls that fill its link
// and resumptions; and idle spells that expire or evict its flows. After
// every step: the flows stay within their caps, with one descriptor
// each; every frame it gets is well formed and within its MTU; and a few
// turns later epoll has nothing left to report that nothing consumes.
// At the end the engine still answers ARP, and once every flow expired
// no descriptor is left.
func TestUDPICMPRandom(t *testing.T) {
	// It may move this goroutine to a namespace: no subtests, which
	// would run on goroutines of their own, outside it.
	needPing(t)
	for seed := range uint64(3) {
		udpICMPRandom(t, seed)
	}
}

func udpICMPRandom(t *testing.T, seed uint64) {
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 77))
	te := newTestEngine(t)
	te.cfg.NoUDP, te.cfg.NoICMP = false, false
	te.cfg.MaxUDP, te.cfg.MaxICMP = 12, 4
	te.setMTU([]int{MinMTU, 576, 1500}[seed%3])
	has6 := te.cfg.has6()
	type fam struct {
		guest, gw, unreachable netip.Addr
		echo, closed           uint16
	}
	peer := func(network, addr string) uint16 {
		pc, err := net.ListenPacket(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go servePacketsEcho(pc)
		return uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	}
	fams := []fam{{testGuest4, testGW4, netip.MustParseAddr("169.254.1.1"), peer("udp4", "127.0.0.1:0"), closedUDPPort(t, "udp4")}}
	if has6 {
		fams = append(fams, fam{testGuest6, testGW6, netip.MustParseAddr("fe80::77"), peer("udp6", "[::1]:0"), closedUDPPort(t, "udp6")})
	}
	before := openFds(t)
	stalled := false
	for step := range 1500 {
		switch k := rng.IntN(40); {
		case k < 28:
			f := fams[rng.IntN(len(fams))]
			dst, port := f.gw, f.echo
			switch rng.IntN(4) {
			case 0:
				port = f.closed
			case 1:
				dst = f.unreachable
			}
			payload := make([]byte, []int{0, 1, 40, 500, 1400, 3000}[rng.IntN(6)])
			var fr []byte
			if rng.IntN(3) == 0 {
				fr = oddDatagram(f.guest, dst, port, string(payload))
			} else {
				fr = frameIP(f.guest, dst, header.ProtoUDP, udp6(uint16(7000+rng.IntN(24)), port, payload))
			}
			te.tapInput(withTTL(fr, []uint8{0, 1, 2, 64, 255}[rng.IntN(5)]))
		case k < 32:
			f := fams[rng.IntN(len(fams))]
			typ, proto := uint8(header.ICMPv4Echo), uint8(header.ProtoICMP)
			if f.guest.Is6() {
				typ, proto = header.ICMPv6Echo, header.ProtoICMPv6
			}
			dst := f.gw
			if rng.IntN(4) == 0 {
				dst = f.unreachable
			}
			echo := append(echoRequest(typ, uint16(rng.IntN(8)), uint16(step)), make([]byte, rng.IntN(1600))...)
			te.tapInput(withTTL(frameIP(f.guest, dst, proto, echo), uint8(rng.IntN(3))))
		case k < 34:
			te.inputDone()
			fillLink(t, te)
			stalled = true
		case k < 36:
			stalled = false
		case k < 37:
			te.start = te.start.Add(-udpEvictAfter)
		case k < 38:
			te.start = te.start.Add(-udpIdle - icmpIdle)
			te.lastTick = 0
		}
		if rng.IntN(4) != 0 {
			continue
		}
		te.inputDone()
		// A few turns, more while a socket is ready: a peer's replies may
		// come late, but a socket ready turn after turn is one that
		// nothing consumes.
		for i := 0; i < 3 || epollReady(te.Engine, kindUDP) || epollReady(te.Engine, kindICMP); i++ {
			if i == 10 {
				t.Fatalf("step %d: a flow's socket still ready after %d turns (link stalled: %v)", step, i, stalled)
			}
			te.turn(1)
			if !stalled {
				checkedFrames(t, te, func([]byte) {})
			}
		}
		if te.udpFlows() > te.cfg.MaxUDP || te.icmp.count > te.cfg.MaxICMP {
			t.Fatalf("step %d: %d UDP and %d ICMP flows, past their caps", step, te.udpFlows(), te.icmp.count)
		}
		if n := len(leakedFds(t, before)); n != te.udp.count+te.icmp.count {
			t.Fatalf("step %d: %d new descriptors for %d flows", step, n, te.udp.count+te.icmp.count)
		}
	}
	te.inputDone()
	te.turn(10)
	for { // the guest reads again, until the engine has nothing queued
		drainFrames(te.rd, te.guest, func([]byte) {})
		if te.link.Pending() == 0 {
			break
		}
		te.flush()
	}
	te.tapInput(seedFrames()[0])
	if out := te.output(t); len(out) != 1 || header.Ethernet(out[0]).Type() != header.EtherTypeARP {
		t.Errorf("no ARP reply after the storm, %d frames", len(out))
	}
	// A late reply keeps its flow for another while.
	for i := 0; i < 5 && te.udp.count+te.icmp.count > 0; i++ {
		te.start = te.start.Add(-udpIdle - icmpIdle)
		te.lastTick = 0
		te.turn(0)
	}
	if leaked := leakedFds(t, before); len(leaked) != 0 {
		t.Errorf("descriptors left once every flow expired: %v (flows %d %d)", leaked, te.udp.count, te.icmp.count)
	}
}
