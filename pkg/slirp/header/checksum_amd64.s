#include "textflag.h"

// func sumAVX2(b []byte) uint64
//
// len(b) is a multiple of 64 and at most 1 MiB, so no 32-bit lane of the
// four accumulators, nor their sum, can overflow: each lane gains at most
// one 16-bit word per 64 bytes.
TEXT ·sumAVX2(SB), NOSPLIT, $0-32
	MOVQ b_base+0(FP), SI
	MOVQ b_len+8(FP), CX
	VPXOR Y15, Y15, Y15
	VPXOR Y4, Y4, Y4
	VPXOR Y7, Y7, Y7
	VPXOR Y8, Y8, Y8
	VPXOR Y9, Y9, Y9
	TESTQ CX, CX
	JZ done

loop:
	VMOVDQU (SI), Y0
	VMOVDQU 32(SI), Y1
	VPUNPCKLWD Y15, Y0, Y2
	VPUNPCKHWD Y15, Y0, Y3
	VPUNPCKLWD Y15, Y1, Y5
	VPUNPCKHWD Y15, Y1, Y6
	VPADDD Y2, Y4, Y4
	VPADDD Y3, Y7, Y7
	VPADDD Y5, Y8, Y8
	VPADDD Y6, Y9, Y9
	ADDQ $64, SI
	SUBQ $64, CX
	JNZ loop

done:
	// Add the accumulators, widen the eight 32-bit lanes to 64 bits and
	// add those up.
	VPADDD Y7, Y4, Y4
	VPADDD Y9, Y8, Y8
	VPADDD Y8, Y4, Y4
	VEXTRACTI128 $1, Y4, X6
	VPMOVZXDQ X4, Y5
	VPMOVZXDQ X6, Y6
	VPADDQ Y6, Y5, Y5
	VEXTRACTI128 $1, Y5, X6
	VPADDQ X6, X5, X5
	VMOVQ X5, AX
	VPEXTRQ $1, X5, BX
	ADDQ BX, AX
	VZEROUPPER
	MOVQ AX, ret+24(FP)
	RET
