package slirp

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/gopasst/gopasst/pkg/qemusock"
)

// newTestEngine builds an engine with no client attached. Protocols that
// open host sockets are off, so fuzzed frames never leave the process.
func newTestEngine(t testing.TB) *Engine {
	lfd, err := qemusock.Listen(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{
		Addr4: netip.MustParseAddr("192.0.2.2"), Prefix4: 24,
		Gateway4: netip.MustParseAddr("192.0.2.1"),
		DNS4:     []netip.Addr{netip.MustParseAddr("192.0.2.1")},
		Search:   []string{"example.test"}, Hostname: "h", FQDN: "h.example.test",
		NoTCP: true, NoUDP: true, NoICMP: true,
	}, lfd)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// FuzzFrame feeds whole Ethernet frames to the engine's input path.
func FuzzFrame(f *testing.F) {
	for _, s := range seedFrames() {
		f.Add(s)
	}
	e := newTestEngine(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		e.tapInput(b)
	})
}

func FuzzDHCP(f *testing.F) {
	f.Add(dhcpDiscover4())
	e := newTestEngine(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseDHCP(b)
		if err != nil {
			return
		}
		if out := e.buildDHCP(&m, dhcpAck); len(out) < 300 {
			t.Fatalf("reply of %d bytes", len(out))
		}
	})
}

func FuzzDNS(f *testing.F) {
	f.Add([]byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'w', 'w', 'w', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := parseDNSQuery(b)
		if err == nil && len(q.Name) > 255 {
			t.Fatalf("name of %d bytes", len(q.Name))
		}
	})
}
