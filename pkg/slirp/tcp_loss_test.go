package slirp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// Data loss at the ends of a connection: bytes the host socket took and
// acknowledged for the guest must reach it however the connection ends.

// TestTCPHostResetDelivers: a host peer sends more than the guest's
// window, then resets (a server closing with the request's rest unread).
// Its socket took and acknowledged all of it, and a client of its own
// would read it all before the reset: the guest gets every byte, then
// the RST at the end of them, even though it acknowledges only after the
// reset came and sends more (which no one can take) meanwhile.
func TestTCPHostResetDelivers(t *testing.T) {
	want := pattern(48<<10, 5)
	reset := make(chan struct{})
	h := newHotPath(t, func(c net.Conn) {
		defer close(reset)
		c.Write(want)
		raw, _ := c.(*net.TCPConn).SyscallConn()
		for queued := 1; queued > 0; time.Sleep(time.Millisecond) {
			raw.Control(func(fd uintptr) { queued, _ = sockQueued(int(fd), unix.SIOCOUTQ) })
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	h.wnd = 8 << 10 >> 7 // 8 KiB, scaled by 2^7
	h.send(h.segment(header.TCPAck, 0))
	h.readFrames(func(header.TCP) {})
	start := h.ack
	<-reset
	// The reset reached the host socket: it is closed, or gone with the
	// flow.
	for i := 0; ; i++ {
		h.e.turn(5)
		f := h.flow()
		if f == nil {
			break
		}
		if hungUp(f.fd) {
			break
		}
		if i == 1000 {
			t.Fatal("the host socket never saw the peer's reset")
		}
		time.Sleep(time.Millisecond)
	}
	seg := h.segment(header.TCPAck|header.TCPPsh, 100) // past the reset
	h.send(seg)
	got, rst := h.receiveUntilRst(t, start)
	if string(got) != string(want) || !rst {
		t.Fatalf("the guest got %d of %d bytes (equal %v), then a RST at the end %v", len(got), len(want), string(got) == string(want), rst)
	}
	if h.e.tcp.count != 0 {
		t.Fatal("flow left after the RST")
	}
}

// TestTCPGuestResetDelivers: the guest uploads to a host peer that does
// not read yet, so most of it waits in the host socket, acknowledged,
// then sends its last segment and a reset in one batch (a server closing
// with a request's rest unread). A peer of the guest's own would have
// had the data and read it before the reset: the host peer reads every
// byte, then the reset, which comes once it has them. The flow is gone
// at once, its socket lingering out of the table.
func TestTCPGuestResetDelivers(t *testing.T) {
	h, c := tcpPeer(t)
	up := pattern(1<<20+1000, 9)
	h.uploadData(t, up[:1<<20])
	// The last segment and the RST in one batch, as a guest's close
	// sends them.
	last := h.segment(header.TCPAck|header.TCPPsh, 1000)
	copy(last[len(last)-1000:], up[1<<20:])
	batch := append([]byte(nil), last...)
	h.seq += 1000
	h.send(append(batch, h.segment(header.TCPRst|header.TCPAck, 0)...))
	h.e.turn(5)
	if h.e.tcp.count != 0 || len(h.e.tcp.lingers) != 1 {
		t.Fatalf("after the guest's RST: %d flows, %d sockets lingering; want 0 and 1", h.e.tcp.count, len(h.e.tcp.lingers))
	}
	h.peerReadsThenReset(t, c, up)
}

// peerReadsThenReset runs the engine while host peer c reads to the end
// of its stream (ticks close a lingering socket once its peer has all),
// and checks that it read want, then a reset, and that no socket is left
// lingering.
func (h *hotPath) peerReadsThenReset(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	type result struct {
		got []byte
		err error
	}
	read := make(chan result)
	go func() {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		got, err := io.ReadAll(c)
		read <- result{got, err}
	}()
	var r result
	for done := false; !done; {
		h.e.turn(20)
		select {
		case r = <-read:
			done = true
		default:
		}
	}
	if !bytes.Equal(r.got, want) || !errors.Is(r.err, syscall.ECONNRESET) {
		t.Fatalf("the host peer read %d of %d bytes (equal %v), then %v; want all, then a reset",
			len(r.got), len(want), bytes.Equal(r.got, want), r.err)
	}
	if len(h.e.tcp.lingers) != 0 {
		t.Fatalf("%d sockets still lingering", len(h.e.tcp.lingers))
	}
}

// resetUpload has the guest upload 1 MiB (a pattern of seed) to a host
// peer that reads none of it, then reset the flow: its socket lingers.
func resetUpload(t *testing.T, seed int) (*hotPath, net.Conn) {
	t.Helper()
	h, c := tcpPeer(t)
	h.uploadData(t, pattern(1<<20, seed))
	h.send(h.segment(header.TCPRst|header.TCPAck, 0))
	h.e.turn(5)
	if len(h.e.tcp.lingers) != 1 {
		t.Fatalf("%d sockets lingering, want 1", len(h.e.tcp.lingers))
	}
	return h, c
}

// TestTCPGuestResetLingerBounded: the socket of a flow the guest reset
// lingers no longer than tcpFinTimeout for a host peer that does not
// read: then the peer is reset.
func TestTCPGuestResetLingerBounded(t *testing.T) {
	h, c := resetUpload(t, 13)
	h.jump(tcpFinTimeout)
	h.e.turn(5)
	if len(h.e.tcp.lingers) != 0 {
		t.Fatal("the socket still lingers past tcpFinTimeout")
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the host peer read to %v, want a reset", err)
	}
}

// TestTCPSequenceWrap: both sides' sequence numbers start just below
// 2^32, as any initial ones may, and 1 MiB each way crosses the wrap:
// the host peer reads the upload, and the guest gets the download, byte
// for byte.
func TestTCPSequenceWrap(t *testing.T) {
	h, c := tcpPeer(t)
	f := h.flow()
	// As if both had chosen these initial sequence numbers: nothing
	// moved yet, so the numbers are all relative to them.
	up, down := uint32(1<<32-300000)-h.seq, uint32(1<<32-200000)-f.sndNxt
	h.seq += up
	f.rcvNxt, f.ackSent, f.edgeSent, f.wndSeq = f.rcvNxt+up, f.ackSent+up, f.edgeSent+up, f.wndSeq+up
	h.ack += down
	f.sndUna, f.sndNxt, f.sndMax = f.sndUna+down, f.sndNxt+down, f.sndMax+down

	data := pattern(1<<20, 11)
	read := make(chan []byte)
	go func() {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		got, _ := io.ReadAll(io.LimitReader(c, int64(len(data))))
		read <- got
	}()
	h.uploadData(t, data)
	if got := <-read; !bytes.Equal(got, data) {
		t.Fatalf("the host peer read %d of %d bytes (equal %v)", len(got), len(data), bytes.Equal(got, data))
	}
	go c.Write(data)
	h.receiveStream(t, h.ack, nil, data)
	if f.rcvNxt >= 1<<20 || f.sndNxt >= 1<<20 {
		t.Fatalf("the numbers did not wrap: %d from the guest, %d to it", f.rcvNxt, f.sndNxt)
	}
}

// TestTCPUnixForwardResetDelivers: a unix socket's peer (--unix-fwd)
// answers past the guest's window and closes with the request unread,
// which resets the socket: the guest still gets the whole answer, then
// the RST, as TestTCPHostResetDelivers.
func TestTCPUnixForwardResetDelivers(t *testing.T) {
	u, c := unixForwardConn(t, 8) // 1 KiB: the answer waits in the socket

	u.send(u.segment(header.TCPAck|header.TCPPsh, 3)) // never read
	u.seq += 3
	want := pattern(20<<10, 3)
	c.Write(want)
	u.e.turn(10)
	c.Close()
	u.e.turn(10)
	if got, _ := u.receiveUntilRst(t, u.ack); !bytes.Equal(got, want) {
		t.Fatalf("the guest got %d of %d bytes (equal %v) before the RST", len(got), len(want), bytes.Equal(got, want))
	}
}

// TestTCPGuestGoneKeepsUpload: the guest uploads to a host peer that
// reads slowly, closes its side, and is then gone (its kernel forgets a
// closed connection after a minute, a stopped guest answers nothing):
// the flow ends at tcpFinTimeout, or tcpIdle, or when our data goes
// unacknowledged, but what the guest sent, which we acknowledged, still
// reaches the host peer, then the guest's end of stream.
func TestTCPGuestGoneKeepsUpload(t *testing.T) {
	for _, how := range []string{"fin timeout", "idle", "retries"} {
		t.Run(how, func(t *testing.T) {
			h, c := tcpPeer(t)
			up := pattern(1<<20, 17)
			h.uploadData(t, up)
			if how != "idle" {
				h.send(h.segment(header.TCPFin|header.TCPAck, 0))
				h.seq++
			}
			if how == "retries" {
				c.Write([]byte("never acknowledged"))
			}
			h.e.turn(10)
			for i := 0; h.e.tcp.count != 0; i++ {
				if i == 100 {
					t.Fatalf("the flow outlived %d jumps", i)
				}
				h.jump(tcpIdle / 10)
				h.e.turn(5)
				h.readFrames(func(header.TCP) {})
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(io.LimitReader(c, int64(len(up))))
			if !bytes.Equal(got, up) {
				t.Fatalf("the host peer read %d of %d bytes (equal %v), then %v", len(got), len(up), bytes.Equal(got, up), err)
			}
			if how == "idle" {
				return // no FIN from the guest
			}
			if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("after the upload the host peer read %d bytes, %v; want the guest's FIN", n, err)
			}
		})
	}
}

// TestTCPClientGoneKeepsUpload: the guest uploads to a host peer that
// reads slowly, half-closes or not, and its VM is then gone: the
// front-end disconnects (a guest powered off right after its upload).
// What we acknowledged still reaches the peer. Then comes the guest's
// FIN, if it sent one, else a reset, also when a one-off engine ends (Run
// returns) before the peer has read it all, which waits a while for the
// peer to read it (tcpLingerRelease): the end of stream a plain close
// gives, as passt's exit does, would pass the cut upload off as whole.
// With a peer that does not read until the engine has ended (late), the
// reset comes all the same. So it does when the engine is stopped with
// the guest still there (a SIGTERM): its flows end as if it had gone.
// Before, the disconnect reset every host socket at once and threw their
// data away, and a stop left them to the process's exit, whose close
// sent a FIN.
func TestTCPClientGoneKeepsUpload(t *testing.T) {
	for _, c := range []struct {
		name                              string
		fin, oneOff, answered, late, stop bool
	}{{"fin", true, false, false, false, false}, {"no fin", false, false, false, false, false},
		{"fin, one-off", true, true, false, false, false}, {"no fin, one-off", false, true, false, false, false},
		{"fin, answered, one-off", true, true, true, false, false}, {"no fin, one-off, read late", false, true, false, true, false},
		{"fin, stopped", true, false, false, false, true}, {"no fin, stopped", false, false, false, false, true}} {
		t.Run(c.name, func(t *testing.T) {
			h, conn := tcpPeer(t)
			h.e.cfg.OneOff = c.oneOff
			up := pattern(1<<20, 23)
			h.uploadData(t, up)
			if c.fin {
				h.send(h.segment(header.TCPFin|header.TCPAck, 0))
				h.seq++
			}
			if c.answered {
				conn.Write([]byte("an answer the guest never reads"))
			}
			h.e.turn(10)
			h.readFrames(func(header.TCP) {})
			if c.stop {
				h.e.Stop()
			} else {
				unix.Shutdown(h.guest, unix.SHUT_RDWR) // the front-end is gone
			}
			read := make(chan error, 1)
			ended := make(chan struct{})
			go func() {
				if c.late {
					<-ended
				}
				conn.SetDeadline(time.Now().Add(20 * time.Second))
				got, err := io.ReadAll(io.LimitReader(conn, int64(len(up))))
				if c.late {
					// What the peer's socket took before the reset.
					read <- fmt.Errorf("read %d of %d bytes, then %w", len(got), len(up), err)
					return
				}
				if !bytes.Equal(got, up) {
					read <- fmt.Errorf("the host peer read %d of %d bytes (equal %v), then %v", len(got), len(up), bytes.Equal(got, up), err)
					return
				}
				_, err = conn.Read(make([]byte, 1))
				read <- err
			}()
			if c.oneOff || c.stop {
				if err := h.e.Run(); err != nil {
					t.Fatal(err)
				}
			}
			close(ended)
			var err error
		serve:
			for {
				select {
				case err = <-read:
					break serve
				default:
					if !c.oneOff && !c.stop {
						h.e.turn(10)
					} else {
						time.Sleep(10 * time.Millisecond)
					}
				}
			}
			switch {
			case err != nil && err != io.EOF && !errors.Is(err, syscall.ECONNRESET):
				t.Fatal(err)
			case c.fin && err != io.EOF:
				t.Fatalf("after the upload the host peer read %v; want the end of stream", err)
			case !c.fin && !errors.Is(err, syscall.ECONNRESET):
				t.Fatalf("after the upload the host peer read %v; want a reset", err)
			}
		})
	}
}
