package slirp

import (
	"net/netip"
	"testing"

	"github.com/gopasst/gopasst/pkg/portspec"
	"golang.org/x/sys/unix"
)

// A forward's IPv6 socket takes IPv4 too only when the forward names no
// address and -6 is not given: "::" named, as passt takes it, is IPv6
// alone. (UDP, port 0, closed at once: nothing listens.)
func TestBindV6Only(t *testing.T) {
	for _, c := range []struct {
		name  string
		only6 bool
		addr  netip.Addr
		want  int
	}{
		{"no address", false, netip.Addr{}, 0},
		{"no address, -6", true, netip.Addr{}, 1},
		{"::", false, netip.IPv6Unspecified(), 1},
		{"::1", false, netip.IPv6Loopback(), 1},
	} {
		h := &LocalHost{Only6: c.only6}
		fd, err := h.Bind(UDP, portspec.Forward{Addr: c.addr})
		if err != nil {
			t.Skipf("%s: %v", c.name, err) // no IPv6 here
		}
		only, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		unix.Close(fd)
		if err != nil || only != c.want {
			t.Errorf("%s: IPV6_V6ONLY %d (%v), want %d", c.name, only, err, c.want)
		}
	}
}
