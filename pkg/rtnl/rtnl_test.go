package rtnl

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
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

// The checked-in seeds, real dumps of a namespace, parse into what made
// them: two IPv4 addresses, a /64, a default route and a route with a
// metric per family, and a multipath route with its two paths.
func TestParseSeeds(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the seeds were dumped on a little-endian machine; netlink is in the host's byte order")
	}
	var got []string
	for _, name := range []string{"addr4", "addr6"} {
		addrs, err := ParseAddrs(seed(t, "FuzzParse", name))
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			got = append(got, a.Prefix.String())
		}
	}
	for _, name := range []string{"route4", "route6"} {
		routes, err := ParseRoutes(seed(t, "FuzzParse", name))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if r.Protocol != unix.RTPROT_KERNEL && r.Type == unix.RTN_UNICAST {
				got = append(got, fmt.Sprintf("%v via %v metric %d", r.Dst, r.Gateway, r.Metric))
				for _, h := range r.Nexthops {
					got = append(got, fmt.Sprintf("%v nexthop %v dev %d", r.Dst, h.Gateway, h.Index))
				}
			}
		}
	}
	want := []string{"127.0.0.1/8", "198.51.100.2/24", "203.0.113.9/32", "::1/128", "2001:db8:1::2/64",
		"0.0.0.0/0 via 198.51.100.1 metric 0", "192.0.2.0/24 via 198.51.100.3 metric 50", "::/0 via 2001:db8:1::1 metric 1024",
		"10.9.0.0/16 nexthop 198.51.100.4 dev 3", "10.9.0.0/16 nexthop 198.51.100.5 dev 3"}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("the seeds parse into %q, without %q", got, w)
		}
	}
}
