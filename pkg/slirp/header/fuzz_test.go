package header

import (
	"math/bits"
	"testing"
)

// The views must never panic on input that passed their IsValid check.

func FuzzIPv4(f *testing.F) {
	f.Add([]byte{0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		ip := IPv4(b)
		if !ip.IsValid() {
			return
		}
		_, _, _ = ip.Src(), ip.Dst(), ip.Protocol()
		p := ip.Payload()
		for _, v := range []interface{ IsValid() bool }{TCP(p), UDP(p), ICMP(p)} {
			v.IsValid()
		}
		if t := TCP(p); t.IsValid() {
			_, _ = t.Payload(), ParseSynOptions(t.Options())
		}
		if u := UDP(p); u.IsValid() {
			_ = u.Payload()
		}
	})
}

// FuzzIPv6: the extension-header walk stays inside the packet.
func FuzzIPv6(f *testing.F) {
	hbh := []byte{0x60, 0, 0, 0, 0, 16, 0, 1, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
		0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16,
		58, 0, 5, 2, 0, 0, 1, 0, 143, 0, 0, 0, 0, 0, 0, 0}
	f.Add(hbh)
	f.Fuzz(func(t *testing.T, b []byte) {
		ip := IPv6(b)
		if !ip.IsValid() {
			return
		}
		_, _ = ip.Src(), ip.Dst()
		proto, p, ok := ip.Transport()
		if ok && len(p) > len(ip.Payload()) {
			t.Fatalf("protocol %d payload of %d bytes in a packet of %d", proto, len(p), len(b))
		}
		if m := ICMP(p); ok && len(m) >= NDPNSLen {
			_ = NDPTarget(m)
			NDPOptionsValid(m[NDPNSLen:])
		}
	})
}

func FuzzTCPOptions(f *testing.F) {
	f.Add([]byte{2, 4, 5, 0xb4, 1, 3, 3, 7})
	f.Add([]byte{1, 1, 4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		o := ParseSynOptions(b)
		if o.WS > 14 {
			t.Fatalf("window scale %d above RFC 7323's limit", o.WS)
		}
	})
}

func FuzzARP(f *testing.F) {
	f.Add([]byte{0, 1, 8, 0, 6, 4, 0, 1, 1, 2, 3, 4, 5, 6, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		if a := ARP(b); a.IsValid() {
			_, _, _ = a.Op(), a.SenderIP(), a.TargetIP()
		}
	})
}

// FuzzChecksum holds the vector and portable sums to the textbook loop,
// at every length and alignment the fuzzer finds, and so a sum taken in
// two pieces split anywhere.
func FuzzChecksum(f *testing.F) {
	f.Add(make([]byte, 200), uint8(1))
	f.Add([]byte{0xff, 0xff, 0xff}, uint8(0))
	f.Fuzz(func(t *testing.T, b []byte, off uint8) {
		b = b[min(int(off), len(b)):]
		if got, want := Fold(Checksum(b, 0)), refChecksum(b); got != want {
			t.Fatalf("len %d: %#04x, want %#04x", len(b), got, want)
		}
		if got, want := ^fold16(sumLEGeneric(b)), bits.ReverseBytes16(refChecksum(b)); got != want {
			t.Fatalf("portable sum, len %d: %#04x, want %#04x", len(b), got, want)
		}
		cut := int(off) * 7 % (len(b) + 1)
		if got, want := Fold(ChecksumAt(b[cut:], Checksum(b[:cut], 0), cut)), refChecksum(b); got != want {
			t.Fatalf("len %d in pieces cut at %d: %#04x, want %#04x", len(b), cut, got, want)
		}
	})
}
