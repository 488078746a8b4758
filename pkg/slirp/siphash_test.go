package slirp

import (
	"net/netip"
	"testing"
	"time"
)

// TestSipHash checks the reference implementation's vectors: key 00..0f,
// message 00..n-1.
func TestSipHash(t *testing.T) {
	k := [2]uint64{0x0706050403020100, 0x0f0e0d0c0b0a0908}
	m := make([]byte, 64)
	for i := range m {
		m[i] = byte(i)
	}
	for _, c := range []struct {
		n    int
		want uint64
	}{{0, 0x726fdb47dd0e0e31}, {15, 0xa129ca6149be45e5}} {
		if got := siphash(k, m[:c.n]); got != c.want {
			t.Errorf("%d bytes: %#x, want %#x", c.n, got, c.want)
		}
	}
}

// TestISN: initial sequence numbers follow RFC 6528: the same 4-tuple
// gets a number that moves with the 4 µs clock; another 4-tuple, or
// another gopasst process (another key), gets an unrelated one.
func TestISN(t *testing.T) {
	var a, b tcpTable
	a.init()
	b.init()
	k1 := tcpKey{netip.MustParseAddrPort("192.0.2.2:40000"), netip.MustParseAddrPort("192.0.2.1:80")}
	k2 := tcpKey{netip.MustParseAddrPort("192.0.2.2:40001"), netip.MustParseAddrPort("192.0.2.1:80")}
	if d := a.isn(k1, time.Second) - a.isn(k1, 0); d != 250000 {
		t.Errorf("one second later the ISN moved by %d, want 250000 (4 µs ticks)", d)
	}
	if a.isn(k1, 0) == a.isn(k2, 0) {
		t.Error("two 4-tuples got the same ISN")
	}
	if a.isn(k1, 0) == b.isn(k1, 0) {
		t.Error("two processes got the same ISN for one 4-tuple: the key is not random")
	}
	if n := testing.AllocsPerRun(100, func() { a.isn(k1, 0) }); n != 0 {
		t.Errorf("%.0f allocations per ISN", n)
	}
}
