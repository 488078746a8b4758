package header

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// Checksum adds b to the running one's-complement sum and returns the new,
// unfolded sum.
//
// The sum is taken over little-endian words and byte-swapped at the end:
// the one's-complement sum commutes with swapping (RFC 1071, "byte order
// independence"), and this way the loads need no swapping. sumLE uses
// AVX2 where the CPU has it.
func Checksum(b []byte, initial uint64) uint64 { return ChecksumAt(b, initial, 0) }

// ChecksumAt is Checksum for b at offset off of the data summed, which
// lies in pieces (a frame in scattered buffers): a piece at an odd offset
// adds its sum byte-swapped.
func ChecksumAt(b []byte, initial uint64, off int) uint64 {
	s := fold16(sumLE(b))
	if off&1 == 0 {
		s = bits.ReverseBytes16(s)
	}
	return initial + uint64(s)
}

// sumLEGeneric is the portable sumLE: eight bytes per step with a 64-bit
// add-with-carry.
func sumLEGeneric(b []byte) uint64 {
	var sum, carry uint64
	for len(b) >= 32 {
		sum, carry = bits.Add64(sum, binary.LittleEndian.Uint64(b), carry)
		sum, carry = bits.Add64(sum, binary.LittleEndian.Uint64(b[8:]), carry)
		sum, carry = bits.Add64(sum, binary.LittleEndian.Uint64(b[16:]), carry)
		sum, carry = bits.Add64(sum, binary.LittleEndian.Uint64(b[24:]), carry)
		b = b[32:]
	}
	for len(b) >= 8 {
		sum, carry = bits.Add64(sum, binary.LittleEndian.Uint64(b), carry)
		b = b[8:]
	}
	if len(b) >= 4 {
		sum, carry = bits.Add64(sum, uint64(binary.LittleEndian.Uint32(b)), carry)
		b = b[4:]
	}
	if len(b) >= 2 {
		sum, carry = bits.Add64(sum, uint64(binary.LittleEndian.Uint16(b)), carry)
		b = b[2:]
	}
	if len(b) == 1 {
		sum, carry = bits.Add64(sum, uint64(b[0]), carry)
	}
	return sum + carry
}

// fold16 reduces a running sum to 16 bits, end-around carries included.
func fold16(sum uint64) uint16 {
	s := (sum >> 32) + (sum & 0xffffffff)
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 16) + (s & 0xffff)
	s = (s >> 16) + (s & 0xffff)
	s = (s >> 16) + (s & 0xffff)
	return uint16(s)
}

// Fold reduces a running sum to the 16-bit one's-complement checksum field
// value (already inverted).
func Fold(sum uint64) uint16 { return ^fold16(sum) }

// PseudoHeaderSum is the partial sum of the IPv4 or IPv6 pseudo-header that
// TCP, UDP and ICMPv6 checksums cover.
func PseudoHeaderSum(proto uint8, src, dst netip.Addr, length int) uint64 {
	var sum uint64
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		sum = Checksum(s[:], 0)
		sum = Checksum(d[:], sum)
	} else {
		s, d := src.As16(), dst.As16()
		sum = Checksum(s[:], 0)
		sum = Checksum(d[:], sum)
	}
	return sum + uint64(proto) + uint64(length)
}
