// Package portspec parses passt's port forwarding specifications, the
// arguments of -t/--tcp-ports and -u/--udp-ports, exactly as passt reads
// them (and as libvirt writes them from <portForward>):
//
//	none | all | [ADDR][%IFNAME]/]LIST
//
// where LIST is a comma-separated list of PORT, FIRST-LAST, either
// optionally mapped to guest ports with :GPORT or :GFIRST-GLAST, and
// exclusions ~PORT or ~FIRST-LAST. A list of only exclusions forwards every
// other port. "all" forwards every port that is not ephemeral and not
// already bound on the host when gopasst starts.
package portspec

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Spec is one parsed specification.
type Spec struct {
	Addr    netip.Addr // bind address; invalid means any
	Iface   string     // bind interface; empty means any
	All     bool       // the keyword "all"
	Include []Range    // forwarded ranges, in the order written
	Exclude []Range    // excluded host ports
}

// Range maps host ports First..Last to guest ports starting at Guest.
type Range struct {
	First, Last, Guest uint16
}

// Forward is one host port forwarded to one guest port.
type Forward struct {
	Addr      netip.Addr
	Iface     string
	HostPort  uint16
	GuestPort uint16
}

// Error names the token that failed and why.
type Error struct {
	Spec, Token, Reason string
}

func (e *Error) Error() string {
	if e.Token == e.Spec {
		return fmt.Sprintf("invalid port spec %q: %s", e.Spec, e.Reason)
	}
	return fmt.Sprintf("invalid port spec %q, at %q: %s", e.Spec, e.Token, e.Reason)
}

// Parse reads one specification. "none" yields the zero Spec.
func Parse(s string) (Spec, error) {
	var sp Spec
	bad := func(tok, why string) (Spec, error) { return Spec{}, &Error{s, tok, why} }
	switch s {
	case "none":
		return sp, nil
	case "all":
		sp.All = true
		return sp, nil
	case "":
		return bad(s, "empty")
	}
	list := s
	if i := strings.LastIndex(s, "/"); i >= 0 {
		prefix := s[:i]
		list = s[i+1:]
		addr, iface, hasIface := strings.Cut(prefix, "%")
		if hasIface {
			if iface == "" || len(iface) > 15 || strings.ContainsAny(iface, "/ \t") {
				return bad(prefix, "invalid interface name")
			}
			sp.Iface = iface
		}
		if addr != "" {
			// passt takes an address in brackets too: [::1], [127.0.0.1].
			if in, ok := strings.CutPrefix(addr, "["); ok && strings.HasSuffix(in, "]") {
				addr = strings.TrimSuffix(in, "]")
			}
			a, err := netip.ParseAddr(addr)
			if err != nil || a.Zone() != "" {
				return bad(addr, "invalid address")
			}
			sp.Addr = a.Unmap()
		} else if !hasIface {
			return bad(prefix+"/", "empty address")
		}
	}
	if list == "" {
		return bad(s, "no ports")
	}
	for _, tok := range strings.Split(list, ",") {
		exclude := strings.HasPrefix(tok, "~")
		body := strings.TrimPrefix(tok, "~")
		host, guest, mapped := strings.Cut(body, ":")
		first, last, err := parseRange(host)
		if err != nil {
			return bad(tok, err.Error())
		}
		// Port 0 may be excluded, as passt allows, but never forwarded.
		if first == 0 && !exclude {
			return bad(tok, "port 0 cannot be forwarded")
		}
		r := Range{First: first, Last: last, Guest: first}
		if mapped {
			if exclude {
				return bad(tok, "an exclusion cannot map to a guest port")
			}
			gf, gl, err := parseRange(guest)
			if err == nil && gf == 0 {
				err = errors.New("port 0 cannot be forwarded to")
			}
			if err != nil {
				return bad(tok, "guest side: "+err.Error())
			}
			if gf != gl && gl-gf != last-first {
				return bad(tok, "host and guest ranges differ in size")
			}
			if gf == gl && first != last {
				return bad(tok, "a host range needs a guest range of the same size")
			}
			r.Guest = gf
		}
		if exclude {
			// As passt: an exclusion overlapping another is a mistake.
			for _, x := range sp.Exclude {
				if r.First <= x.Last && x.First <= r.Last {
					return bad(tok, "overlaps another exclusion")
				}
			}
			sp.Exclude = append(sp.Exclude, r)
		} else {
			sp.Include = append(sp.Include, r)
		}
	}
	return sp, nil
}

// parseRange reads PORT or FIRST-LAST, ports 0 to 65535.
func parseRange(s string) (first, last uint16, err error) {
	a, b, isRange := strings.Cut(s, "-")
	f, err := parsePort(a)
	if err != nil {
		return 0, 0, err
	}
	if !isRange {
		return f, f, nil
	}
	l, err := parsePort(b)
	if err != nil {
		return 0, 0, err
	}
	if l < f {
		return 0, 0, fmt.Errorf("range %d-%d runs backwards", f, l)
	}
	return f, l, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	switch {
	case s == "":
		return 0, errors.New("a port number is missing")
	case errors.Is(err, strconv.ErrRange):
		return 0, fmt.Errorf("port %s is past 65535", s)
	case err != nil:
		return 0, fmt.Errorf("%q is not a port number", s)
	}
	return uint16(n), nil
}

// Forwards expands the spec into one entry per host port, exclusions
// applied. For "all", and for a list of only exclusions, it lists every
// port in 1-65535 that skip does not reject; the caller's skip drops
// ephemeral ports and ports already bound on the host.
func (s Spec) Forwards(skip func(port uint16) bool) []Forward {
	excluded := func(p uint16) bool {
		for _, r := range s.Exclude {
			if p >= r.First && p <= r.Last {
				return true
			}
		}
		return false
	}
	var out []Forward
	add := func(host, guest uint16) {
		if !excluded(host) {
			out = append(out, Forward{s.Addr, s.Iface, host, guest})
		}
	}
	if s.All || (len(s.Include) == 0 && len(s.Exclude) > 0) {
		for p := 1; p <= 65535; p++ {
			if skip == nil || !skip(uint16(p)) {
				add(uint16(p), uint16(p))
			}
		}
		return out
	}
	for _, r := range s.Include {
		for p := int(r.First); p <= int(r.Last); p++ {
			add(uint16(p), r.Guest+uint16(p-int(r.First)))
		}
	}
	return out
}
