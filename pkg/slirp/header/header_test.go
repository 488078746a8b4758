package header

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"testing"
)

// refChecksum is the textbook RFC 1071 loop, the oracle for Checksum.
func refChecksum(b []byte) uint16 {
	var sum uint64
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func TestChecksumMatchesReference(t *testing.T) {
	b := make([]byte, 1500)
	for i := range b {
		b[i] = byte(i*7 + i>>3)
	}
	for n := 0; n <= len(b); n += 37 {
		if got, want := Fold(Checksum(b[:n], 0)), refChecksum(b[:n]); got != want {
			t.Fatalf("len %d: %#04x, want %#04x", n, got, want)
		}
	}
	all := make([]byte, 9000)
	for i := range all {
		all[i] = 0xff
	}
	if got, want := Fold(Checksum(all, 0)), refChecksum(all); got != want {
		t.Fatalf("all ones: %#04x, want %#04x", got, want)
	}
}

// TestChecksumLarge covers the vector path's chunking and lane limits:
// all-ones words are the worst case for overflow, and odd lengths and
// offsets leave tails for the portable loop.
func TestChecksumLarge(t *testing.T) {
	b := make([]byte, 3<<20+77)
	for i := range b {
		b[i] = 0xff
	}
	for _, n := range []int{63, 64, 65, 127, 1 << 20, 1<<20 + 64, 1<<20 + 1, 3 << 20, len(b)} {
		for _, off := range []int{0, 1} {
			if got, want := Fold(Checksum(b[off:n], 0)), refChecksum(b[off:n]); got != want {
				t.Fatalf("all ones, [%d:%d]: %#04x, want %#04x", off, n, got, want)
			}
		}
	}
	for i := range b {
		b[i] = byte(i*131 + i>>9)
	}
	for _, n := range []int{1<<20 - 1, 1<<20 + 3, 2<<20 + 640, len(b)} {
		if got, want := Fold(Checksum(b[:n], 0)), refChecksum(b[:n]); got != want {
			t.Fatalf("len %d: %#04x, want %#04x", n, got, want)
		}
		if got, want := ^fold16(sumLEGeneric(b[:n])), bits.ReverseBytes16(refChecksum(b[:n])); got != want {
			t.Fatalf("portable sum, len %d: %#04x, want %#04x", n, got, want)
		}
	}
}

func TestIPv4EncodeValidates(t *testing.T) {
	b := make([]byte, IPv4MinLen+8)
	ip := IPv4(b)
	src, dst := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	ip.Encode(src, dst, ProtoUDP, 64, 8)
	if !ip.IsValid() || ip.Src() != src || ip.Dst() != dst || ip.Protocol() != ProtoUDP {
		t.Fatal("encoded header does not read back")
	}
	if Fold(Checksum(b[:IPv4MinLen], 0)) != 0 {
		t.Fatal("header checksum does not verify")
	}
}

func TestParseSynOptions(t *testing.T) {
	opts := make([]byte, TCPSynOptionLen)
	EncodeSynOptions(opts, 1460, 7)
	o := ParseSynOptions(append([]byte{TCPOptNop, TCPOptSACKPerm, 2}, opts...))
	if o.MSS != 1460 || o.WS != 7 || !o.WSValid {
		t.Fatalf("got %+v", o)
	}
	if o := ParseSynOptions([]byte{TCPOptMSS, 40}); o.MSS != 0 {
		t.Fatalf("overlong option read: %+v", o)
	}
}

func BenchmarkChecksum64K(b *testing.B) {
	buf := make([]byte, 65480)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		Fold(Checksum(buf, 0))
	}
}

func TestTCPFlagsString(t *testing.T) {
	for f, want := range map[TCPFlags]string{TCPSyn | TCPAck: "SYN|ACK", TCPFin: "FIN", 0: "none", TCPRst | TCPAck | TCPPsh: "RST|PSH|ACK"} {
		if got := f.String(); got != want {
			t.Errorf("%#x: %q, want %q", uint8(f), got, want)
		}
	}
}

func TestTCPEncode(t *testing.T) {
	b := make(TCP, TCPMinLen)
	b.Encode(TCPFields{SrcPort: 1, DstPort: 2, Seq: 3, Ack: 4, Flags: TCPSyn, Window: 5, HeaderLen: TCPMinLen})
	if b.SrcPort() != 1 || b.DstPort() != 2 || b.Seq() != 3 || b.Ack() != 4 || b.Flags() != TCPSyn ||
		b.Window() != 5 || b.DataOffset() != TCPMinLen {
		t.Fatalf("% x", []byte(b))
	}
}

// TestICMPErrorMTU: an error's MTU goes where each family's guest reads
// it: the low 16 bits of the unused word for "fragmentation needed"
// (RFC 1191), the whole word for "packet too big" (RFC 4443); Encode
// clears what a previous message left there.
func TestICMPErrorMTU(t *testing.T) {
	m := ICMP{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	m.Encode(ICMPv4Unreachable, ICMPv4FragNeeded)
	m.SetMTU4(1400)
	if want := (ICMP{3, 4, 0, 0, 0, 0, 0x05, 0x78}); string(m) != string(want) {
		t.Errorf("fragmentation needed: % x, want % x", []byte(m), []byte(want))
	}
	m.Encode(ICMPv6TooBig, 0)
	m.SetMTU6(0x10500)
	if want := (ICMP{2, 0, 0, 0, 0, 1, 0x05, 0}); string(m) != string(want) {
		t.Errorf("packet too big: % x, want % x", []byte(m), []byte(want))
	}
}
