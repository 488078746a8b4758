package slirp

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/pkg/tcprepair"
)

// testMigStream is a stream with one guest connection and one inbound
// one, the first with data queued both ways, the second not dumped.
func testMigStream() *migStream {
	s := &migStream{}
	copy(s.seen.addr4[:], testGuest4.AsSlice())
	copy(s.seen.addr6[:], testGuest6.AsSlice())
	s.seen.mac = [6]byte{2, 0, 0, 0, 0, 1}
	guest := migSide{oaddr: testGW4, eaddr: testGuest4, oport: 80, eport: 40000}
	host := migSide{oaddr: netip.MustParseAddr("127.0.0.1"), eaddr: netip.MustParseAddr("127.0.0.1"), oport: 51000, eport: 80}
	s.flows = []migFlow{{
		tcp: migTCP{pif: [2]uint8{pifTap, pifHost}, side: [2]migSide{guest, host}, wsFromTap: 7, wsToTap: 8,
			events: evEstablished, tapMSS: 1460, wndFromTap: 500, wndToTap: 1000,
			seqToTap: 1000, seqAckFromTap: 900, seqFromTap: 5000, seqAckToTap: 5000, seqInitFromTap: 4000},
		sock: tcprepair.State{TCPState: 1, Options: 7, SndWScale: 7, RcvWScale: 8, MSS: 1460, Timestamp: 12345,
			SeqSnd: 77, SeqRcv: 88, NotSent: 2, SendQ: []byte("queued"), RecvQ: []byte("unread")},
	}, {
		tcp: migTCP{pif: [2]uint8{pifHost, pifTap}, side: [2]migSide{
			{oaddr: testGW6, eaddr: netip.MustParseAddr("2001:db8::99"), oport: 8080, eport: 1234},
			{oaddr: testGW6, eaddr: testGuest6, oport: 5555, eport: 80}},
			events: evEstablished | evTapFinSent, tapMSS: 1440},
	}}
	return s
}

func TestMigrationRoundTrip(t *testing.T) {
	s := testMigStream()
	b := appendMigration(nil, s)
	if want := migHeaderLen + migSeenLen + 4 + 2*migTCPLen + 2*migExtLen + len("queued") + len("unread"); len(b) != want {
		t.Fatalf("stream of %d bytes, want %d", len(b), want)
	}
	got, err := readMigration(bytes.NewReader(b), 16)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Errorf("read back\n%+v\nwant\n%+v", got, s)
	}
}

// TestMigrationRefused: each fault is refused with its reason.
func TestMigrationRefused(t *testing.T) {
	good := appendMigration(nil, testMigStream())
	flow0 := migHeaderLen + migSeenLen + 4
	ext0 := flow0 + 2*migTCPLen
	patch := func(off int, v ...byte) []byte {
		b := bytes.Clone(good)
		copy(b[off:], v)
		return b
	}
	for _, tc := range []struct {
		name, want string
		b          []byte
	}{
		{"bad magic", "magic", patch(0, 0)},
		{"version 1", "not supported", patch(8, 0, 0, 0, 1, 0, 0, 0, 1)},
		{"version 3 only", "not supported", patch(8, 0, 0, 0, 3, 0, 0, 0, 3)},
		{"version 0", "invalid", patch(8, 0, 0, 0, 0)},
		{"too many flows", "more than the 16", patch(flow0-4, 0, 0, 1, 0)},
		{"truncated header", "truncated", good[:10]},
		{"truncated flow", "truncated", good[:flow0+50]},
		{"truncated queue", "truncated", good[:len(good)-3]},
		{"bad interface", "interfaces", patch(flow0, 3)},
		{"two guest sides", "interfaces", patch(flow0, pifTap, pifTap)},
		{"window scale", "window scale", patch(flow0+75, 15)},
		{"not established", "not an established", patch(flow0+77, 0)},
		{"queue too long", "more than", patch(ext0+8, 0x10, 0, 0, 0)},
		{"not sent beyond queue", "not sent", patch(ext0+12, 0, 0, 1, 0)},
		{"TCP state", "TCP state", patch(ext0+50, 12)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readMigration(bytes.NewReader(tc.b), 16)
			if err == nil || !errors.Is(err, errMigration) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// FuzzMigration feeds the loader any stream: it refuses or reads it,
// never panics, and what it reads it writes back the same.
func FuzzMigration(f *testing.F) {
	f.Add(appendMigration(nil, testMigStream()))
	f.Add(appendMigration(nil, &migStream{}))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := readMigration(bytes.NewReader(b), 16)
		if err != nil {
			return
		}
		back := appendMigration(nil, s)
		if s2, err := readMigration(bytes.NewReader(back), 16); err != nil || !reflect.DeepEqual(s, s2) {
			t.Fatalf("written back, read as %v", err)
		}
	})
}

