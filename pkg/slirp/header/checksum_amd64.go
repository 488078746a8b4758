package header

import (
	"math/bits"

	"golang.org/x/sys/cpu"
)

var hasAVX2 = cpu.X86.HasAVX2

// sumLE is the one's-complement sum of b's little-endian 16-bit words,
// unfolded. A frame's payload is checksummed once per frame, and at 64 KiB
// frames that is the engine's own largest cost: AVX2 sums 64 bytes a step.
func sumLE(b []byte) uint64 {
	if !hasAVX2 {
		return sumLEGeneric(b)
	}
	var sum, carry uint64
	for len(b) >= 64 {
		n := min(len(b), avx2Chunk) &^ 63
		sum, carry = bits.Add64(sum, sumAVX2(b[:n]), carry)
		b = b[n:]
	}
	sum, carry = bits.Add64(sum, sumLEGeneric(b), carry)
	return sum + carry
}

// avx2Chunk is the most sumAVX2 takes at once, before its 32-bit lanes
// could overflow.
const avx2Chunk = 1 << 20

// sumAVX2 sums b, whose length is a multiple of 64 and at most avx2Chunk,
// in 32-bit lanes.
//
//go:noescape
func sumAVX2(b []byte) uint64
