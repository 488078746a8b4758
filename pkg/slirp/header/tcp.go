package header

import "encoding/binary"

// TCPMinLen is the size of a TCP header without options.
const TCPMinLen = 20

// TCP flags.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPPsh = 0x08
	TCPAck = 0x10
)

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
func (t TCP) SrcPort() uint16 { return binary.BigEndian.Uint16(t[0:]) }

// DstPort is the destination port.
func (t TCP) DstPort() uint16 { return binary.BigEndian.Uint16(t[2:]) }

// Seq is the sequence number.
func (t TCP) Seq() uint32 { return binary.BigEndian.Uint32(t[4:]) }

// Ack is the acknowledgement number.
func (t TCP) Ack() uint32 { return binary.BigEndian.Uint32(t[8:]) }

// DataOffset is the header length in bytes.
func (t TCP) DataOffset() int { return int(t[12]>>4) * 4 }

// Flags are the control bits.
func (t TCP) Flags() uint8 { return t[13] }

// Window is the raw, unscaled window field.
func (t TCP) Window() uint16 { return binary.BigEndian.Uint16(t[14:]) }

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

// Encode fills the fixed header; hdrLen includes any options already
// written after it. The checksum field is zeroed for the caller to fill.
func (t TCP) Encode(src, dst uint16, seq, ack uint32, flags uint8, wnd uint16, hdrLen int) {
	binary.BigEndian.PutUint16(t[0:], src)
	binary.BigEndian.PutUint16(t[2:], dst)
	binary.BigEndian.PutUint32(t[4:], seq)
	binary.BigEndian.PutUint32(t[8:], ack)
	t[12] = uint8(hdrLen/4) << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:], wnd)
	t[16], t[17], t[18], t[19] = 0, 0, 0, 0
}

// SetChecksum stores a checksum computed by the caller.
func (t TCP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(t[16:], c) }
