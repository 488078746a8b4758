package qemusock

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPcap: a link with a capture records the frames it reads and the
// frames committed to the guest (not the reservations cancelled), each
// whole, after a libpcap header for Ethernet with microsecond stamps.
func TestPcap(t *testing.T) {
	lfd, cfd := streamPair(t)
	path := filepath.Join(t.TempDir(), "cap.pcap")
	p, err := CreatePcap(path)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	l := WithPcap(NewStream(lfd, QEMU), p)
	unix.Write(cfd, append([]byte{0, 0, 0, 5}, "guest"...))
	if got, err := frames(t, l); err != nil || len(got) != 1 {
		t.Fatalf("frames %q, %v", got, err)
	}
	for _, s := range []string{"first", "second"} { // a batch: two kept, one cancelled
		copy(l.Reserve(100), s)
	}
	l.Reserve(100)
	l.Commit(5)
	l.Commit(6)
	l.Cancel()
	copy(l.Reserve(10), "alone")
	l.Commit(5)

	recs := records(t, path)
	if want := []string{"guest", "first", "second", "alone"}; len(recs) != len(want) ||
		recs[0] != want[0] || recs[1] != want[1] || recs[2] != want[2] || recs[3] != want[3] {
		t.Fatalf("records %q, want %q", recs, want)
	}
	frame := make([]byte, 1500)
	if n := testing.AllocsPerRun(100, func() { p.Write(frame) }); n != 0 {
		t.Errorf("%.0f allocations per frame", n)
	}
}

// TestPcapManyPieces: a frame from the guest whose tail is in more
// pieces than one writev takes (a vhost-user chain of a thousand
// buffers) is recorded all the same: a guest cannot keep its frames out
// of the capture by cutting them up.
func TestPcapManyPieces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cap.pcap")
	p, err := CreatePcap(path)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	frame := testFrame(HeadCopy + 2000)
	var tail []unix.Iovec
	for i := HeadCopy; i < len(frame); i++ {
		tail = append(tail, unix.Iovec{Base: &frame[i], Len: 1})
	}
	p.Write(frame[:HeadCopy], tail...)
	if recs := records(t, path); len(recs) != 1 || recs[0] != string(frame) {
		t.Fatalf("%d records, want the frame", len(recs))
	}
}

// records reads the frames a capture file holds.
func records(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 24 || binary.LittleEndian.Uint32(data) != 0xa1b2c3d4 || binary.LittleEndian.Uint32(data[20:]) != 1 {
		t.Fatalf("header % x", data[:min(24, len(data))])
	}
	var recs []string
	for r := data[24:]; len(r) >= 16; {
		n := int(binary.LittleEndian.Uint32(r[8:]))
		if int(binary.LittleEndian.Uint32(r[12:])) != n || len(r) < 16+n {
			t.Fatalf("record header % x", r[:16])
		}
		recs, r = append(recs, string(r[16:16+n])), r[16+n:]
	}
	return recs
}

// TestPcapVhostUser: over vhost-user, a frame from the guest whose tail
// stays in guest memory is recorded whole, and a frame to the guest goes
// through the queue so that it is recorded too.
func TestPcapVhostUser(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	path := filepath.Join(t.TempDir(), "cap.pcap")
	p, err := CreatePcap(path)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	l := WithPcap(f.l, p)
	frame := testFrame(1000)
	copy(f.mem[feBufs+12:], frame)
	f.desc(1, 0, feBufs, 12+1000, 0, 0)
	f.offer(1, 0)
	l.Read()
	if got, _ := l.Next(); len(got) != HeadCopy || len(l.Tail()) != 1 {
		t.Fatalf("read a head of %d bytes and a tail of %d pieces", len(got), len(l.Tail()))
	}
	f.rxBufs(0, 1, 4096)
	head, iov := l.ReserveV(54, 600, make([]unix.Iovec, 0, 4))
	copy(head, frame[:600])
	l.Commit(600)
	l.Flush()
	if len(iov) != 1 || f.usedIdx(0) != 1 {
		t.Fatalf("%d pieces, RX used index %d", len(iov), f.usedIdx(0))
	}
	if recs := records(t, path); len(recs) != 2 || recs[0] != string(frame) || recs[1] != string(frame[:600]) {
		t.Fatalf("%d records", len(recs))
	}
}
