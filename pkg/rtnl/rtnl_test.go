package rtnl

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// The kernel's own answer for loopback parses: 127.0.0.1/8 on lo, and
// the local table's routes are left out.
func TestDumpLoopback(t *testing.T) {
	c, err := Open()
	if err != nil {
		t.Skip(err)
	}
	defer c.Close()
	addrs, err := c.Addrs(unix.AF_INET, 1)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range addrs {
		found = found || a.Prefix == netip.MustParsePrefix("127.0.0.1/8")
	}
	if !found {
		t.Errorf("lo's addresses %v lack 127.0.0.1/8", addrs)
	}
	routes, err := c.Routes(unix.AF_INET, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Type == unix.RTN_LOCAL {
			t.Errorf("a local table route came back: %+v", r)
		}
	}
}

// A request the kernel refuses comes back as its errno.
func TestRequestError(t *testing.T) {
	c, err := Open()
	if err != nil {
		t.Skip(err)
	}
	defer c.Close()
	err = c.AddAddr(Addr{Prefix: netip.MustParsePrefix("192.0.2.1/24"), Index: 1 << 30})
	if err != unix.ENODEV && err != unix.EPERM {
		t.Errorf("address on a missing interface: %v, want ENODEV (or EPERM unprivileged)", err)
	}
}

// FuzzParse: any bytes as a dump answer, never a panic or a hang; the
// seeds are real dumps of a namespace with IPv4 and IPv6 addresses and
// routes.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseAddrs(b)
		ParseRoutes(b)
	})
}
