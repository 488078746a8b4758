package portspec

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// fwd lists host:guest pairs for compact expectations.
func pairs(fs []Forward) [][2]uint16 {
	var out [][2]uint16
	for _, f := range fs {
		out = append(out, [2]uint16{f.HostPort, f.GuestPort})
	}
	return out
}

func span(first, last, guest int) [][2]uint16 {
	var out [][2]uint16
	for p := first; p <= last; p++ {
		out = append(out, [2]uint16{uint16(p), uint16(guest + p - first)})
	}
	return out
}

func cat(xs ...[][2]uint16) [][2]uint16 {
	var out [][2]uint16
	for _, x := range xs {
		out = append(out, x...)
	}
	return out
}

// TestLibvirtSpecs: the argv strings libvirt builds from its own test XML.
func TestLibvirtSpecs(t *testing.T) {
	tests := []struct {
		spec  string
		addr  string
		iface string
		want  [][2]uint16
	}{
		{"2001:db8:ac10:fd01::1:10/22:2022,1000-1050,~1020,~1030-1040", "2001:db8:ac10:fd01::1:10", "",
			cat(span(22, 22, 2022), span(1000, 1019, 1000), span(1021, 1029, 1021), span(1041, 1050, 1041))},
		{"1.2.3.4%eth0/5000-5020:6000-6020,~5010-5015", "1.2.3.4", "eth0",
			cat(span(5000, 5009, 6000), span(5016, 5020, 6016))},
		{"80", "", "", span(80, 80, 80)},
		{"443:344", "", "", span(443, 443, 344)},
		{"18022:22,18100-18110,~18105", "", "", cat(span(18022, 18022, 22), span(18100, 18104, 18100), span(18106, 18110, 18106))},
		{"127.0.0.1/18200-18202:18300-18302", "127.0.0.1", "", span(18200, 18202, 18300)},
	}
	for _, tc := range tests {
		s, err := Parse(tc.spec)
		if err != nil {
			t.Errorf("%s: %v", tc.spec, err)
			continue
		}
		if tc.addr != "" && s.Addr != netip.MustParseAddr(tc.addr) || tc.addr == "" && s.Addr.IsValid() {
			t.Errorf("%s: address %v, want %q", tc.spec, s.Addr, tc.addr)
		}
		if s.Iface != tc.iface {
			t.Errorf("%s: interface %q, want %q", tc.spec, s.Iface, tc.iface)
		}
		if got := pairs(s.Forwards(nil)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\n got %v\nwant %v", tc.spec, got, tc.want)
		}
	}
}

// An address in brackets, as passt takes it, IPv6 or IPv4, with an
// interface too.
func TestBracketedAddress(t *testing.T) {
	for spec, want := range map[string]string{"[::1]/8081": "::1", "[127.0.0.1]/80": "127.0.0.1", "[2001:db8::1]%lo/22": "2001:db8::1"} {
		s, err := Parse(spec)
		if err != nil || s.Addr != netip.MustParseAddr(want) {
			t.Errorf("%s: address %v, want %s (%v)", spec, s.Addr, want, err)
		}
	}
	for _, bad := range []string{"[::1/80", "::1]/80", "[]/80"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestKeywordsAndExclusionsOnly(t *testing.T) {
	if s, err := Parse("none"); err != nil || len(s.Forwards(nil)) != 0 {
		t.Fatalf("none: %v %v", s, err)
	}
	skipLow := func(p uint16) bool { return p < 1024 }
	s, _ := Parse("all")
	if fs := s.Forwards(skipLow); len(fs) != 65535-1023 || fs[0].HostPort != 1024 {
		t.Fatalf("all: %d forwards starting at %d", len(fs), fs[0].HostPort)
	}
	s, _ = Parse("~20000-20010")
	if fs := s.Forwards(nil); len(fs) != 65535-11 {
		t.Fatalf("exclusions only: %d forwards", len(fs))
	}
	// Excluding port 0, as passt takes it, excludes nothing.
	if s, err := Parse("~0,5"); err != nil || !reflect.DeepEqual(pairs(s.Forwards(nil)), span(5, 5, 5)) {
		t.Fatalf("~0,5: %+v %v", s, err)
	}
	s, err := Parse("%lo/8080")
	if err != nil || s.Iface != "lo" || s.Addr.IsValid() {
		t.Fatalf("%%lo/8080: %+v %v", s, err)
	}
}

func TestInvalidSpecs(t *testing.T) {
	for spec, token := range map[string]string{
		"":            "",
		"0":           "0",
		"65536":       "65536",
		"80-70":       "80-70",
		"1-10:20-25":  "1-10:20-25",
		"1-10:20":     "1-10:20",
		"~5:6":        "~5:6",
		"abc":         "abc",
		"80,,81":      "",
		"1.2.3/80":    "1.2.3",
		"/80":         "/",
		"1.2.3.4%/80": "1.2.3.4%",
		"1.2.3.4/":    "1.2.3.4/",
		"0-5":         "0-5",
		"8080:0":      "8080:0",
		// passt refuses overlapping exclusions.
		"1-9,~2-4,~4": "~4",
	} {
		_, err := Parse(spec)
		var pe *Error
		if !errors.As(err, &pe) {
			t.Errorf("%q: accepted (err %v)", spec, err)
			continue
		}
		if token != "" && pe.Token != token {
			t.Errorf("%q: blamed %q, want %q", spec, pe.Token, token)
		}
		if !strings.Contains(err.Error(), spec) {
			t.Errorf("%q: message %q does not quote the spec", spec, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"none", "all", "22", "22-80:32-90", "192.0.2.1%eth0/22", "2000-5000,~3000-3010", "~20000-20010", "::1/443:8443"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sp, err := Parse(s)
		if err != nil {
			return
		}
		for _, r := range sp.Include {
			if r.First == 0 {
				t.Fatalf("%q: forwards port 0", s)
			}
		}
		for _, r := range append(sp.Include, sp.Exclude...) {
			if r.Last < r.First {
				t.Fatalf("%q: bad range %+v", s, r)
			}
		}
	})
}

// TestErrorMessages: a bad spec's error says what is wrong in words a
// user acts on, naming the token once, and the token apart from the spec
// only where it is a part of it.
func TestErrorMessages(t *testing.T) {
	for spec, want := range map[string]string{
		"22a":      `invalid port spec "22a": "22a" is not a port number`,
		"22:":      `invalid port spec "22:": guest side: a port number is missing`,
		"70000":    `invalid port spec "70000": port 70000 is past 65535`,
		"80,1-":    `invalid port spec "80,1-", at "1-": a port number is missing`,
		"90-80":    `invalid port spec "90-80": range 90-80 runs backwards`,
		"x/80":     `invalid port spec "x/80", at "x": invalid address`,
		"80:90-91": `invalid port spec "80:90-91": host and guest ranges differ in size`,
	} {
		if _, err := Parse(spec); err == nil || err.Error() != want {
			t.Errorf("Parse(%q): %v, want %s", spec, err, want)
		}
	}
}
