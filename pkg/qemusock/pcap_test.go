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
	if want := []string{"guest", "first", "second", "alone"}; len(recs) != len(want) ||
		recs[0] != want[0] || recs[1] != want[1] || recs[2] != want[2] || recs[3] != want[3] {
		t.Fatalf("records %q, want %q", recs, want)
	}
	frame := make([]byte, 1500)
	if n := testing.AllocsPerRun(100, func() { p.Write(frame) }); n != 0 {
		t.Errorf("%.0f allocations per frame", n)
	}
}
