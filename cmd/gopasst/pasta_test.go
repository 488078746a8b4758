package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// Pasta's callers' exact command lines parse, as pasta's, and configure
// what they ask for (effect: the forwards and the engine's
// configuration, on a host with testdata's resolv.conf and no routes,
// where passt takes local mode).
func TestPastaCommandLines(t *testing.T) {
	a := netip.MustParseAddr
	dnsTo := func(c slirp.Config, fwd string) bool {
		return c.DNSMap[a(fwd)] == netip.MustParseAddrPort("127.0.0.53:53")
	}
	for _, tc := range []struct {
		from, argv string
		check      func(o *pastaOptions) bool
		effect     func(f pastaForwards, c slirp.Config) bool // nil: parsed only
	}{
		{"rootlesskit v2.3.6", "--stderr --ns-ifname=tap0 --mtu=65520 --config-net --address=10.0.2.100 --netmask=24 " +
			"--gateway=10.0.2.2 --dns-forward=10.0.2.3 --no-map-gw --ipv4-only --tcp-ports=auto --udp-ports=auto --host-lo-to-ns-lo 4242",
			func(o *pastaOptions) bool {
				return o.NSIfname == "tap0" && o.MTU == 65520 && o.ConfigNet && o.Netmask == "24" && o.NoMapGW && o.IPv4 &&
					o.TCPPorts[0] == "auto" && o.HostLoToNsLo && slices.Equal(o.Target, []string{"4242"}) && !o.isCommand()
			},
			func(f pastaForwards, c slirp.Config) bool {
				return f.tcp.auto && f.udp.auto && f.tcpNS.auto && c.Addr4 == a("10.0.2.100") && c.Prefix4 == 24 &&
					c.Gateway4 == a("10.0.2.2") && dnsTo(c, "10.0.2.3") && !c.HostLoopback(false).IsValid() && !c.Addr6.IsValid()
			}},
		{"rootlesskit --detach-netns", "--config-net --tcp-ports=none --udp-ports=none --userns=/proc/42/ns/user --netns=/run/user/1000/netns",
			func(o *pastaOptions) bool { return o.Userns == "/proc/42/ns/user" && o.Netns != "" && !o.isCommand() }, nil},
		// rootlesskit v3.0.1 (main, pkg/network/pasta/pasta.go, the same
		// argv as v2.3.6) with --port-driver=builtin, --ipv6 and without
		// --disable-host-loopback: ports none, IPv6 on, the gateway
		// reaches host loopback.
		{"rootlesskit v3.0.1 --port-driver=builtin --ipv6", "--stderr --ns-ifname=tap0 --mtu=65520 --config-net --address=10.0.2.100 " +
			"--netmask=24 --gateway=10.0.2.2 --dns-forward=10.0.2.3 --tcp-ports=none --udp-ports=none --host-lo-to-ns-lo 4242",
			func(o *pastaOptions) bool { return !o.IPv4 && !o.NoMapGW && o.TCPPorts[0] == "none" },
			func(f pastaForwards, c slirp.Config) bool {
				return !f.tcp.auto && f.tcp.specs[0] == "none" && f.tcpNS.auto && c.HostLoopback(false) == a("10.0.2.2")
			}},
		// Docker rootless (moby contrib/dockerd-rootless.sh, 2026-08): its
		// defaults, --disable-host-loopback --port-driver=implicit
		// --detach-netns --mtu=65520, as rootlesskit v3.0.1 passes them.
		{"dockerd-rootless.sh, rootlesskit v3.0.1", "--stderr --ns-ifname=tap0 --mtu=65520 --config-net --address=10.0.2.100 " +
			"--netmask=24 --gateway=10.0.2.2 --dns-forward=10.0.2.3 --no-map-gw --ipv4-only --tcp-ports=auto --udp-ports=auto " +
			"--host-lo-to-ns-lo --userns=/proc/4242/ns/user --netns=/run/user/1000/dockerd-rootless/netns",
			func(o *pastaOptions) bool {
				t, cmd, err := o.target()
				return err == nil && cmd == nil && t.user == "/proc/4242/ns/user" && t.net == "/run/user/1000/dockerd-rootless/netns"
			},
			func(f pastaForwards, c slirp.Config) bool {
				return f.tcp.auto && f.udp.auto && !c.HostLoopback(false).IsValid() && dnsTo(c, "10.0.2.3")
			}},
		// nerdctl (extras/rootless/containerd-rootless.sh) with
		// CONTAINERD_ROOTLESS_ROOTLESSKIT_NET=pasta: MTU 1500 (65520 only
		// for slirp4netns), the builtin port driver, host loopback
		// disabled, --detach-netns.
		{"nerdctl containerd-rootless.sh", "--stderr --ns-ifname=tap0 --mtu=1500 --config-net --address=10.0.2.100 --netmask=24 " +
			"--gateway=10.0.2.2 --dns-forward=10.0.2.3 --no-map-gw --ipv4-only --tcp-ports=none --udp-ports=none --host-lo-to-ns-lo " +
			"--userns=/proc/4242/ns/user --netns=/run/user/1000/containerd-rootless/netns",
			func(o *pastaOptions) bool { return o.MTU == 1500 && o.Netns != "" },
			func(f pastaForwards, c slirp.Config) bool {
				return c.MTU == 1500 && !f.tcp.auto && !f.udp.auto && !c.HostLoopback(false).IsValid()
			}},
		{"podman 5", "--config-net -t 18082-18082:80-80 --dns-forward 169.254.1.1 -u none -T none -U none --no-map-gw --quiet " +
			"--netns /run/user/1000/netns/netns-x --pid /run/p.pid",
			func(o *pastaOptions) bool {
				return o.TCPPorts[0] == "18082-18082:80-80" && o.TCPNS[0] == "none" && o.Quiet && o.PidFile == "/run/p.pid"
			}, nil},
		// podman 5.0 (containers/common v0.58.0 libnetwork/pasta/pasta.go):
		// the ports first, no --dns-forward but --dns none.
		{"podman 5.0", "--config-net -t 8080-8081:80-81 -u 127.0.0.1/5353-5353:53-53 -T none -U none --no-map-gw --dns none " +
			"--quiet --netns /run/user/1000/netns/netns-1",
			func(o *pastaOptions) bool { return o.DNS[0] == "none" && o.Netns != "" },
			func(f pastaForwards, c slirp.Config) bool {
				return f.tcp.specs[0] == "8080-8081:80-81" && f.udp.specs[0] == "127.0.0.1/5353-5353:53-53" && !f.tcpNS.auto &&
					len(c.DNS4) == 0 && len(c.DNS6) == 0 && len(c.DNSMap) == 0 && !c.HostLoopback(false).IsValid()
			}},
		// podman 5.1 (containers/common v0.59.0 pasta_linux.go): the
		// --dns-forward address 169.254.0.1; an IPv6 host address as
		// podman writes it, without brackets.
		{"podman 5.1", "--config-net -t ::1/8080-8080:80-80 --dns-forward 169.254.0.1 -u none -T none -U none --no-map-gw --quiet " +
			"--netns /run/user/1000/netns/netns-1",
			func(o *pastaOptions) bool { return o.DNSForward[0] == "169.254.0.1" },
			func(f pastaForwards, c slirp.Config) bool {
				return f.tcp.specs[0] == "::1/8080-8080:80-80" && dnsTo(c, "169.254.0.1")
			}},
		// podman 5.2 (containers/common v0.60.0): no --quiet once the
		// user's options (pasta_options, --network pasta:...) ask for
		// --debug or --trace; here c/common's own test case.
		{"podman 5.2 verbose", "--config-net --log-file=/tmp/log --trace --debug --dns-forward 169.254.0.1 -t none -u none -T none " +
			"-U none --no-map-gw --netns netns123",
			func(o *pastaOptions) bool { return o.LogFile == "/tmp/log" && o.Trace && o.Debug && !o.Quiet }, nil},
		// podman 5.3 to main (containers/container-libs common, 2026-04):
		// --map-guest-addr last, so that podman can drop it for a pasta
		// that lacks it (TestPastaUnknownOption).
		{"podman 5.3+, container-libs main", "--config-net --dns-forward 169.254.1.1 -t none -u none -T none -U none --no-map-gw " +
			"--quiet --netns netns123 --map-guest-addr 169.254.1.2",
			func(o *pastaOptions) bool { return o.MapGuestAddr[0] == "169.254.1.2" },
			func(f pastaForwards, c slirp.Config) bool {
				return c.MapGuestAddr4 == a("169.254.1.2") && dnsTo(c, "169.254.1.1") && !f.tcp.auto && !f.udpNS.auto
			}},
		// podman's rootless bridge networks (container-libs
		// rootlessnetns/netns_linux.go setupPasta): --pid, which podman
		// reads to move pasta to the user's slice.
		{"podman rootless-netns", "--config-net --pid /run/user/1000/containers/networks/rootless-netns/rootless-netns-conn.pid " +
			"--dns-forward 169.254.1.1 -t none -u none -T none -U none --no-map-gw --quiet " +
			"--netns /run/user/1000/containers/networks/rootless-netns/rootless-netns --map-guest-addr 169.254.1.2",
			func(o *pastaOptions) bool {
				return strings.HasSuffix(o.PidFile, "rootless-netns-conn.pid") && o.Netns != ""
			}, nil},
		// --network pasta:--map-gw,-T,80 (c/common's test case): podman
		// drops --map-gw, so no --no-map-gw, and -T 80 keeps -T none out.
		{"podman --map-gw -T 80", "--config-net -T 80 --dns-forward 169.254.1.1 -t none -u none -U none --quiet --netns netns123 " +
			"--map-guest-addr 169.254.1.2",
			func(o *pastaOptions) bool { return !o.NoMapGW && o.TCPNS[0] == "80" },
			func(f pastaForwards, c slirp.Config) bool {
				return !f.tcpNS.auto && f.tcpNS.specs[0] == "80" && c.HostLoopback(false).IsValid()
			}},
		// Options users put in pasta_options (containers.conf) or
		// --network pasta:...: passt.1's, in getopt's spellings.
		{"pasta_options", "--config-net -a 10.0.2.15 -n 24 -g 10.0.2.2 -I eth0 -m1500 -4 -D 10.0.2.3 -S example.test " +
			"--no-ndp --no-dhcpv6 --no-ra --no-icmp --dns-forward 10.0.2.3 --netns netns123",
			func(o *pastaOptions) bool { return o.NSIfname == "eth0" && o.MTU == 1500 && o.IPv4 && o.NoICMP },
			func(f pastaForwards, c slirp.Config) bool {
				return c.Addr4 == a("10.0.2.15") && c.Gateway4 == a("10.0.2.2") && c.MTU == 1500 && !c.Addr6.IsValid() &&
					slices.Equal(c.DNS4, []netip.Addr{a("10.0.2.3")}) && slices.Equal(c.Search, []string{"example.test"}) &&
					c.NoNDP && c.NoDHCPv6 && c.NoICMP
			}},
		{"command mode", "-I tap0 -T 8080 -U none -f -- sh -c 'exit 3'",
			func(o *pastaOptions) bool {
				return o.isCommand() && o.Foreground && o.Target[len(o.Target)-1] == "exit 3"
			}, nil},
		{"command without --", "--config-net ip addr show",
			func(o *pastaOptions) bool { return o.isCommand() && strings.Join(o.Target, " ") == "ip addr show" }, nil},
		// getopt takes the "--" that ends the options: a PID after it is
		// a PID still, and --netns with nothing after "--" is --netns
		// alone. gopasst ran "4242" as a command, and refused the other.
		{"-- PID", "--config-net -t none -- 4242",
			func(o *pastaOptions) bool {
				t, cmd, err := o.target()
				return err == nil && cmd == nil && t.net == "/proc/4242/ns/net" && t.pid == 4242
			}, nil},
		{"--netns then --", "--config-net --netns /run/user/1000/netns/x --",
			func(o *pastaOptions) bool {
				t, cmd, err := o.target()
				return err == nil && cmd == nil && t.file == "/run/user/1000/netns/x"
			}, nil},
		// getopt's "+": options stop at the first word that is not one,
		// so those after a PID make it a command.
		{"options after the PID", "--config-net 4242 -t 80",
			func(o *pastaOptions) bool {
				return o.isCommand() && slices.Equal(o.Target, []string{"4242", "-t", "80"}) && o.TCPPorts == nil
			}, nil},
	} {
		var c cli
		var out bytes.Buffer
		ctx, done, code := parseArgs(&c, append([]string{"pasta"}, splitTest(tc.argv)...), &out, &out)
		if done {
			t.Errorf("%s: %q did not parse (exit %d): %s", tc.from, tc.argv, code, out.String())
			continue
		}
		if !strings.HasPrefix(ctx.Command(), "pasta") || !tc.check(&c.Pasta) {
			t.Errorf("%s: %q selected %q with %+v", tc.from, tc.argv, ctx.Command(), c.Pasta)
			continue
		}
		if tc.effect == nil {
			continue
		}
		f, err := c.Pasta.forwards()
		if err != nil {
			t.Errorf("%s: forwards: %v", tc.from, err)
			continue
		}
		ns, err := pastaConfig(&c.Pasta, hostState{"testdata/resolv.conf", nil})
		if err != nil || !tc.effect(f, ns.Config) {
			t.Errorf("%s: %q: %+v, %+v (%v)", tc.from, tc.argv, f, ns.Config, err)
		}
	}
}

// rootlesskit (pkg/network/pasta DetectFeatures, v2.3.6 to main) runs
// "pasta --version" and "pasta --host-lo-to-ns-lo --version" and needs
// exit 0 from both; the second decides whether it passes
// --host-lo-to-ns-lo.
func TestPastaVersionProbe(t *testing.T) {
	for _, argv := range [][]string{{"--version"}, {"--host-lo-to-ns-lo", "--version"}} {
		var out, errOut bytes.Buffer
		if code := run(modeArgs("pasta", argv), &out, &errOut); code != 0 || !strings.Contains(out.String(), version) {
			t.Errorf("pasta %v: exit %d, %q %q", argv, code, out.String(), errOut.String())
		}
	}
}

// An unknown option is reported in getopt's words, with exit status 1:
// podman keys its retry without --map-guest-addr on them.
func TestPastaUnknownOption(t *testing.T) {
	for argv, want := range map[string]string{
		"--config-net --no-such-option 1.2.3.4": "unrecognized option '--no-such-option'\n",
		"-Z":                                    "invalid option -- 'Z'\n",
	} {
		var c cli
		var out bytes.Buffer
		_, done, code := parseArgs(&c, append([]string{"pasta"}, splitTest(argv)...), &out, &out)
		if !done || code != 1 || !strings.HasSuffix(out.String(), want) {
			t.Errorf("%q: exit %d, %q; want 1 and %q", argv, code, out.String(), want)
		}
	}
}

// -t, -u, -T and -U default to auto, and auto sits beside specs.
func TestPastaPorts(t *testing.T) {
	if m := pastaPorts(nil); !m.auto || m.specs != nil {
		t.Errorf("default: %+v", m)
	}
	if m := pastaPorts([]string{"none"}); m.auto || len(m.specs) != 1 {
		t.Errorf("none: %+v", m)
	}
	if m := pastaPorts([]string{"auto", "22"}); !m.auto || m.specs[0] != "22" {
		t.Errorf("auto,22: %+v", m)
	}
}

// What passt and pasta refuse of one option's forwards before binding
// anything (tests/diffforward_test.go compares them with upstream): a
// keyword beside other forwards (but auto beside ports, gopasst's own),
// all in pasta mode, auto in passt mode, an address or interface for -T
// or -U.
func TestCheckModes(t *testing.T) {
	for _, c := range []struct {
		specs         string
		pasta, nsSide bool
		ok            bool
	}{
		{"none 80", false, false, false}, {"80 none", false, false, false}, {"none none", false, false, false},
		{"all 80", false, false, false}, {"auto", false, false, false}, {"all", true, false, false},
		{"auto none", true, false, false}, {"53 none", true, true, false}, {"127.0.0.1/9000", true, true, false},
		{"%lo/53", true, true, false},
		{"all", false, false, true}, {"none", false, false, true}, {"80 81 127.0.0.1/82", false, false, true},
		{"auto", true, true, true}, {"auto 80", true, false, true}, {"127.0.0.1/80 %lo/81", true, false, true}, {"9000 9001:9002", true, true, true},
	} {
		err := checkModes("-x", strings.Fields(c.specs), c.pasta, c.nsSide)
		if (err == nil) != c.ok {
			t.Errorf("%q (pasta %v, namespace side %v): %v", c.specs, c.pasta, c.nsSide, err)
		}
	}
}

// The listening sockets of /proc/net tables: TCP in LISTEN, UDP with no
// peer; established and connected ones are not.
func TestParseProcNet(t *testing.T) {
	tcp := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
`
	udp := `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3 2 0000000000000000 0
  2: 0100007F:D431 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 4 2 0000000000000000 0
  3: 0100007F:D432 0100007F:0035 07 00000000:00000000 00:00000000 00000000     0        0 5 2 0000000000000000 0
`
	var got []uint16
	parseProcNet([]byte(tcp), false, func(p uint16) { got = append(got, p) })
	parseProcNet([]byte(udp), true, func(p uint16) { got = append(got, p) })
	if !slices.Equal(got, []uint16{8080, 5353}) {
		t.Errorf("listening ports %v, want [8080 5353]", got)
	}
}

// FuzzProcNet: any table, never a panic; a port is never 0.
func FuzzProcNet(f *testing.F) {
	f.Add([]byte("   0: 0100007F:1F90 00000000:0000 0A 0\n"), false)
	f.Add([]byte("  1: 00000000:14E9 00000000:0000 07 0\n"), true)
	f.Fuzz(func(t *testing.T, b []byte, udp bool) {
		parseProcNet(b, udp, func(p uint16) {
			if p == 0 {
				t.Fatal("port 0")
			}
		})
	})
}

// In pasta mode DHCP names no resolvers or search domains unless
// --dhcp-dns and --dhcp-search ask, as pasta's.
func TestPastaDHCPDNS(t *testing.T) {
	for argv, want := range map[string]bool{"": true, "--dhcp-dns --dhcp-search": false} {
		var c cli
		var out bytes.Buffer
		if _, done, _ := parseArgs(&c, append([]string{"pasta", "-a", "192.0.2.2", "-g", "192.0.2.1"}, splitTest(argv)...), &out, &out); done {
			t.Fatal(out.String())
		}
		cfg, err := pastaConfig(&c.Pasta, thisHost)
		if err != nil {
			t.Skip(err)
		}
		if cfg.NoDHCPDNS != want || cfg.NoDHCPSearch != want {
			t.Errorf("%q: NoDHCPDNS %v, NoDHCPSearch %v; want %v", argv, cfg.NoDHCPDNS, cfg.NoDHCPSearch, want)
		}
	}
}

// The helper reads the namespace's tables for -t auto once for a burst of
// binds, not once a bind: only a port it did not see listening reads them
// again, and not within listenReread of the last read. A container with
// thousands of ports made it read megabytes for each of them, with the
// engine waiting, and one that also churned ports, for each of those.
func TestPastaMayBindReadsOnMiss(t *testing.T) {
	table := func(port string) []byte {
		return []byte("  sl  local_address rem_address   st\n   0: 0100007F:" + port + " 00000000:0000 0A 0\n")
	}
	path := t.TempDir() + "/tcp"
	if err := os.WriteFile(path, table("1F90"), 0o600); err != nil { // 8080
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := &pastaHelper{fwds: pastaForwards{tcp: portModes{auto: true}}, listen: listenCache{tables: []procTable{{slirp.TCP, int(f.Fd())}}}}
	may := func(port uint16) bool {
		return p.mayBind(slirp.TCP, portspec.Forward{HostPort: port, GuestPort: port})
	}
	if !may(8080) || may(8081) || may(1) {
		t.Fatal("8080 listens, 8081 and 1 do not")
	}
	if err := os.WriteFile(path, table("1F91"), 0o600); err != nil { // 8081
		t.Fatal(err)
	}
	if !may(8080) {
		t.Error("8080, seen listening, read the tables again")
	}
	p.listen.next = time.Now().Add(time.Hour) // as if just read
	if may(8081) {
		t.Error("a port not seen listening read the tables again within listenReread of the last read")
	}
	p.listen.next = time.Time{}
	if !may(8081) || may(8080) {
		t.Error("a port not seen listening did not read the tables again")
	}
}

// auto tries a bind that failed again after 1, 2, 4 ... 32 scans, at once
// once it worked, and forgets a port that no longer listens.
func TestAutoRetry(t *testing.T) {
	a := &autoScan{retry: [2]map[fwdPort]retry{{}, {}}}
	p := fwdPort{slirp.TCP, 8080}
	var tried []int
	for a.n = 1; a.n <= 120; a.n++ {
		if a.due(bindNS, p) {
			tried = append(tried, a.n)
			a.bound(bindNS, p, errors.New("busy"))
		}
	}
	want := []int{1, 2, 4, 8, 16, 32, 64, 96}
	if !slices.Equal(tried, want) {
		t.Errorf("tried at scans %v, want %v", tried, want)
	}
	if a.due(bindHost, p) != true || a.due(bindNS, p) {
		t.Error("the two sides' retries are not apart")
	}
	a.forget(bindNS, map[fwdPort]bool{})
	if !a.due(bindNS, p) {
		t.Error("a port that stopped listening is still waited for")
	}
	a.bound(bindNS, p, errors.New("busy"))
	a.bound(bindNS, p, nil)
	if !a.due(bindNS, p) {
		t.Error("a bind that worked is still waited for")
	}
}

// With -u auto as well as -t auto, a TCP port listening is forwarded for
// UDP too, as pasta's; with -t auto alone, it is not.
func TestAutoUDPFollowsTCP(t *testing.T) {
	open := func(name, content string) procTable {
		path := t.TempDir() + "/" + name
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return procTable{slirp.Proto(name), int(f.Fd())}
	}
	tcp := open("tcp", "  sl  local_address rem_address   st\n   0: 00000000:1F90 00000000:0000 0A 0\n") // 8080
	udp := open("udp", "  sl  local_address rem_address   st\n")
	var a autoScan
	got := a.listening([]procTable{tcp, udp})
	if !got[fwdPort{slirp.TCP, 8080}] || !got[fwdPort{slirp.UDP, 8080}] || len(got) != 2 {
		t.Errorf("-t auto -u auto: %v, want TCP and UDP 8080", got)
	}
	if got := a.listening([]procTable{tcp}); len(got) != 1 {
		t.Errorf("-t auto alone: %v, want TCP 8080 alone", got)
	}
}

// -u ~8000 names 65534 ports: the agent's plan keeps them as ranges,
// small (a list of them, in the agent's environment then, made
// nsenter's exec fail with E2BIG), and the loopback path still finds each.
func TestSpliceRulesWideSpec(t *testing.T) {
	o := &pastaOptions{}
	for _, spec := range []string{"~8000", "53,5353-5355"} {
		r := newSpliceRules(o, netSetup{}, pastaForwards{udp: portModes{specs: []string{spec}}})
		js, err := json.Marshal(nsPlan{Splice: r})
		if err != nil || len(js) > 4096 {
			t.Fatalf("the plan for -u %s takes %d bytes (%v)", spec, len(js), err)
		}
		want := map[uint16]bool{1: true, 7999: true, 8000: false, 8001: true, 65535: true}
		if spec != "~8000" {
			want = map[uint16]bool{53: true, 54: false, 5353: true, 5355: true, 5356: false}
		}
		for port, named := range want {
			if r.UDP.contains(port) != named {
				t.Errorf("-u %s names %d: %v, want %v", spec, port, !named, named)
			}
		}
	}
}

// TestWatchTargetWithoutPidfd: where pidfd_open(2) fails (a kernel before
// 5.3, or a container's seccomp profile denying it), the PID is still
// watched, by looking for it: it was taken for gone at once, and a
// rootlesskit start failed.
func TestWatchTargetWithoutPidfd(t *testing.T) {
	defer func(f func(int, int) (int, error)) { pidfdOpen = f }(pidfdOpen)
	pidfdOpen = func(int, int) (int, error) { return -1, unix.ENOSYS }
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	gone := watchTarget(nsTarget{pid: cmd.Process.Pid})
	select {
	case <-gone:
		t.Fatal("a PID that lives taken for gone")
	case <-time.After(1500 * time.Millisecond):
	}
	cmd.Process.Kill()
	cmd.Wait()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("a PID that exited still watched after 10 s")
	}
}
