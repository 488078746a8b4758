package header

import (
	"encoding/binary"
	"strings"
)

// TCPMinLen is the size of a TCP header without options.
const TCPMinLen = 20

// Offsets of the fixed header's fields (RFC 9293, 3.1).
const (
	tcpSrcPort  = 0
	tcpDstPort  = 2
	tcpSeq      = 4
	tcpAck      = 8
	tcpDataOff  = 12 // in 32-bit words, in the high nibble
	tcpFlags    = 13
	tcpWindow   = 14
	tcpChecksum = 16
	tcpUrgent   = 18
)

// TCPFlags are a segment's control bits.
type TCPFlags uint8

// TCP flags.
const (
	TCPFin TCPFlags = 0x01
	TCPSyn TCPFlags = 0x02
	TCPRst TCPFlags = 0x04
	TCPPsh TCPFlags = 0x08
	TCPAck TCPFlags = 0x10
)

var tcpFlagNames = [...]string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}

// String names the flags set, as "SYN|ACK", for logs.
func (f TCPFlags) String() string { return BitNames(uint32(f), tcpFlagNames[:], "none") }

// BitNames names the bits set in v, bit i by names[i], as "A|B" for logs,
// or none when no named bit is set.
func BitNames(v uint32, names []string, none string) string {
	var set []string
	for i, n := range names {
		if v&(1<<i) != 0 {
			set = append(set, n)
		}
	}
	if len(set) == 0 {
		return none
	}
	return strings.Join(set, "|")
}

// TCP option kinds gopasst reads or writes.
const (
	TCPOptEnd       = 0
	TCPOptNop       = 1
	TCPOptMSS       = 2
	TCPOptWS        = 3
	TCPOptSACKPerm  = 4
	tcpOptMSSLen    = 4
	tcpOptWSLen     = 3
	TCPSynOptionLen = 8 // MSS + NOP + window scale, padded
)

// TCP is a view of a TCP segment.
type TCP []byte

// IsValid reports whether the header and its options fit in the segment.
func (t TCP) IsValid() bool {
	if len(t) < TCPMinLen {
		return false
	}
	off := t.DataOffset()
	return off >= TCPMinLen && off <= len(t)
}

// SrcPort is the source port.
func (t TCP) SrcPort() uint16 { return binary.BigEndian.Uint16(t[tcpSrcPort:]) }

// DstPort is the destination port.
func (t TCP) DstPort() uint16 { return binary.BigEndian.Uint16(t[tcpDstPort:]) }

// Seq is the sequence number.
func (t TCP) Seq() uint32 { return binary.BigEndian.Uint32(t[tcpSeq:]) }

// Ack is the acknowledgement number.
func (t TCP) Ack() uint32 { return binary.BigEndian.Uint32(t[tcpAck:]) }

// DataOffset is the header length in bytes.
func (t TCP) DataOffset() int { return int(t[tcpDataOff]>>4) * 4 }

// Flags are the control bits.
func (t TCP) Flags() TCPFlags { return TCPFlags(t[tcpFlags]) }

// Window is the raw, unscaled window field.
func (t TCP) Window() uint16 { return binary.BigEndian.Uint16(t[tcpWindow:]) }

// Options are the bytes between the fixed header and the payload.
func (t TCP) Options() []byte { return t[TCPMinLen:t.DataOffset()] }

// Payload is the segment's data.
func (t TCP) Payload() []byte { return t[t.DataOffset():] }

// SynOptions are the options gopasst reads from a SYN.
type SynOptions struct {
	MSS     uint16 // 0 if absent
	WS      uint8  // window scale shift
	WSValid bool   // the peer offered window scaling
}

// ParseSynOptions reads MSS and window scale and ignores everything else.
// It stops at a malformed option instead of failing the segment: a SYN with
// junk options still opens a connection, with the defaults.
func ParseSynOptions(opts []byte) SynOptions {
	var o SynOptions
	for len(opts) > 0 {
		kind := opts[0]
		if kind == TCPOptEnd {
			break
		}
		if kind == TCPOptNop {
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || opts[1] < 2 || int(opts[1]) > len(opts) {
			break
		}
		l := int(opts[1])
		switch {
		case kind == TCPOptMSS && l == tcpOptMSSLen:
			o.MSS = binary.BigEndian.Uint16(opts[2:])
		case kind == TCPOptWS && l == tcpOptWSLen:
			o.WS, o.WSValid = min(opts[2], 14), true
		}
		opts = opts[l:]
	}
	return o
}

// EncodeSynOptions writes MSS and window scale options (TCPSynOptionLen bytes).
func EncodeSynOptions(b []byte, mss uint16, ws uint8) {
	b[0], b[1] = TCPOptMSS, tcpOptMSSLen
	binary.BigEndian.PutUint16(b[2:], mss)
	b[4], b[5], b[6], b[7] = TCPOptNop, TCPOptWS, tcpOptWSLen, ws
}

// TCPFields are the fixed header's fields, for Encode.
type TCPFields struct {
	SrcPort, DstPort uint16
	Seq, Ack         uint32
	Flags            TCPFlags
	Window           uint16 // raw, unscaled
	HeaderLen        int    // with any options already written after the fixed header
}

// Encode fills the fixed header from f. The checksum is zeroed for the
// caller to fill, and the urgent pointer is zero.
func (t TCP) Encode(f TCPFields) {
	binary.BigEndian.PutUint16(t[tcpSrcPort:], f.SrcPort)
	binary.BigEndian.PutUint16(t[tcpDstPort:], f.DstPort)
	binary.BigEndian.PutUint32(t[tcpSeq:], f.Seq)
	binary.BigEndian.PutUint32(t[tcpAck:], f.Ack)
	t[tcpDataOff] = uint8(f.HeaderLen/4) << 4
	t[tcpFlags] = uint8(f.Flags)
	binary.BigEndian.PutUint16(t[tcpWindow:], f.Window)
	binary.BigEndian.PutUint32(t[tcpChecksum:], 0) // and the urgent pointer
}

// SetChecksum stores a checksum computed by the caller.
func (t TCP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(t[tcpChecksum:], c) }
