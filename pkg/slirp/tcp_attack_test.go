package slirp

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp/header"
)

// pattern is n bytes that differ from their neighbours, so a byte lost,
// repeated or moved shows.
func pattern(n, salt int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8 + salt)
	}
	return b
}

// uploadData sends p as the guest's data, in segments of up to 1400
// bytes, and lets the engine write it.
func (h *hotPath) uploadData(t *testing.T, p []byte) {
	t.Helper()
	for len(p) > 0 {
		n := min(len(p), 1400)
		seg := h.segment(header.TCPAck|header.TCPPsh, n)
		copy(seg[len(seg)-n:], p[:n])
		h.send(seg)
		h.seq += uint32(n)
		p = p[n:]
		h.e.turn(0)
		h.readFrames(func(header.TCP) {})
	}
	h.e.turn(10)
	h.readFrames(func(header.TCP) {})
	if f := h.flow(); f == nil || f.rcvNxt != h.seq {
		t.Fatalf("the engine took the guest's data up to %d, want %d", f.rcvNxt, h.seq)
	}
}

// TestTCPOrderlyCloseKeepsUpload: the guest uploads to a host peer that
// does not read yet, half-closes, then gets the peer's reply and FIN and
// acknowledges them in one ACK, which ends the flow. The host socket
// must close orderly: the upload still queued in it reaches the peer
// whole, then EOF, not a reset that throws it away.
func TestTCPOrderlyCloseKeepsUpload(t *testing.T) {
	for _, ackWithFin := range []bool{false, true} {
		name := "fin first"
		if ackWithFin {
			name = "fin with ack"
		}
		t.Run(name, func(t *testing.T) {
			h, c := tcpPeer(t)
			up := pattern(1<<20, 3)
			h.uploadData(t, up)
			if !ackWithFin {
				h.send(h.segment(header.TCPFin|header.TCPAck, 0))
				h.seq++
				h.e.turn(10)
				h.readFrames(func(header.TCP) {})
			}
			c.Write([]byte("reply"))
			c.(*net.TCPConn).CloseWrite()
			fin := false
			for i := 0; i < 200 && !fin; i++ {
				h.e.turn(10)
				h.readFrames(func(s header.TCP) {
					if p := s.Payload(); len(p) > 0 && s.Seq() == h.ack {
						h.ack += uint32(len(p))
					}
					if isFin(s) && s.Seq() == h.ack {
						h.ack++
						fin = true
					}
				})
			}
			if !fin {
				t.Fatal("no FIN from the host")
			}
			if ackWithFin {
				h.send(h.segment(header.TCPFin|header.TCPAck, 0))
				h.seq++
			} else {
				h.send(h.segment(header.TCPAck, 0))
			}
			h.e.turn(10)
			if h.e.tcp.count != 0 {
				t.Fatalf("flow left after both FINs: %v", h.flow().state)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, up) {
				t.Fatalf("the host peer read %d of %d bytes (equal %v), then %v; want all, then EOF",
					len(got), len(up), bytes.Equal(got, up), err)
			}
		})
	}
}
