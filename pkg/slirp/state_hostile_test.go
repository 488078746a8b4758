package slirp

import (
	stdlog "log"
	"net/netip"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/pkg/slirp/header"
)

// TestFlowOpenFailureLogBounded: when a guest flow's host socket cannot
// be bound (here, to an --outbound-if4 interface that does not exist),
// each datagram or echo request that would open it is dropped. The log
// says so once, not once per frame: a guest sending fast would otherwise
// write a line per frame at the default verbosity. passt logs this at
// debug only. The sockets are never bound, so nothing is sent.
func TestFlowOpenFailureLogBounded(t *testing.T) {
	pingNetns(t) // for ping sockets; and the interface is surely absent
	te := newTestEngine(t)
	te.cfg.NoUDP, te.cfg.NoICMP = false, false
	te.cfg.OutboundIf4 = "gopasst-none0"
	var log strings.Builder
	te.cfg.Log = stdlog.New(&log, "", 0)
	dst := netip.MustParseAddr("192.0.2.77")
	for i := range 100 {
		te.tapInput(frameIP(testGuest4, dst, header.ProtoUDP, udp6(uint16(5000+i), 9, []byte("x"))))
		te.tapInput(frameIP(testGuest4, dst, header.ProtoICMP, echoRequest(header.ICMPv4Echo, uint16(i), 1)))
	}
	te.inputDone()
	te.output(t)
	if te.udp.count != 0 || te.icmp.count != 0 {
		t.Fatalf("%d UDP and %d ICMP flows opened, want none", te.udp.count, te.icmp.count)
	}
	if n := strings.Count(log.String(), "\n"); n > 2 {
		t.Errorf("%d log lines for 200 frames, want at most one per protocol:\n%.400s", n, log.String())
	}
}
