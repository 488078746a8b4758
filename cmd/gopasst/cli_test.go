package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestArgv parses every command line that libvirt, QEMU 10.1's
// -netdev passt, the other programs that start passt (KubeVirt through
// libvirt, muvm, krunai, virtual-dsm's network.sh) and the README give gopasst, and checks what
// each one selects.
func TestArgv(t *testing.T) {
	for _, tc := range []struct {
		from  string
		argv  string
		cmd   string
		check func(*cli) bool
	}{
		{"libvirt <backend type='passt'/>", "--one-off --socket /run/libvirt/qemu/passt/1-vm-net0.socket " +
			"--pid /run/libvirt/qemu/passt/1-vm-net0-passt.pid --log-file /var/log/passt.log --address 192.0.2.50 " +
			"--netmask 24 --mtu 1500 --interface eth0 --hostname vm --fqdn vm.example --gateway 192.0.2.1 " +
			"--tcp-ports 127.0.0.1/18080-18082:8080-8082,~18081 --tcp-ports 2222:22 --udp-ports 5353", "serve",
			func(c *cli) bool {
				o := c.Serve
				return o.OneOff && o.Socket != "" && o.PidFile != "" && o.Address[0] == "192.0.2.50" && o.MTU == 1500 &&
					slices.Equal(o.TCPPorts, []string{"127.0.0.1/18080-18082:8080-8082,~18081", "2222:22"}) && !lendPages(&o)
			}},
		{"libvirt <interface type='vhostuser'><backend type='passt'/>", "--one-off --socket /run/s --pid /run/p --vhost-user", "serve",
			func(c *cli) bool { return c.Serve.VhostUser }},
		{"QEMU 10.1 -netdev passt", "--quiet --pid /tmp/passt-X.pid --fd 3", "serve",
			func(c *cli) bool {
				return c.Serve.Quiet && c.Serve.Fd == 3 && c.Serve.PidFile == "/tmp/passt-X.pid" && lendPages(&c.Serve)
			}},
		{"QEMU 10.1 -netdev passt, every option net/passt.c emits", qemuPasstArgv, "serve", func(c *cli) bool {
			o := c.Serve
			return o.VhostUser && o.Quiet && o.MTU == 1500 && o.Address[0] == "192.0.2.2" && o.Netmask == "24" &&
				o.MAC == "9a:55:9a:55:9a:56" && o.Gateway[0] == "192.0.2.1" && o.Interface == "lo" &&
				o.Outbound[0] == "192.0.2.9" && o.OutboundIf4 == "lo" && o.OutboundIf6 == "lo" &&
				o.DNS[0] == "192.0.2.53" && o.FQDN == "vm.example.test" && o.NoDHCPDNS && o.NoDHCPSearch &&
				o.MapHostLoopback[0] == "192.0.2.77" && o.MapGuestAddr[0] == "192.0.2.88" &&
				o.DNSForward[0] == "192.0.2.3" && o.DNSHost[0] == "192.0.2.53" && o.NoTCP && o.NoUDP && o.NoICMP &&
				o.NoDHCP && o.NoNDP && o.NoDHCPv6 && o.NoRA && o.Freebind && !o.IPv6 && o.IPv4 &&
				o.Search[0] == "example.test lab.example" && o.TCPPorts[0] == "8080,8443:443" &&
				o.UDPPorts[0] == "5353,5354" && o.Debug && o.Pcap == "/tmp/q.pcap" &&
				o.PidFile == "/tmp/passt-X.pid" && o.Fd == 3
		}},
		{"QEMU 10.1 -netdev passt, param= in passt's other spellings", "--quiet -o 2001:db8::9 -a 192.0.2.2/24 -m 0 " +
			"--map-host-loopback=none --map-guest-addr=2001:db8::88 --stats 5 --pid /tmp/p --fd 3", "serve",
			func(c *cli) bool {
				o := c.Serve
				return o.Outbound[0] == "2001:db8::9" && o.Address[0] == "192.0.2.2/24" && o.MTU == 0 &&
					o.MapHostLoopback[0] == "none" && o.MapGuestAddr[0] == "2001:db8::88" && o.Stats == 5
			}},
		// KubeVirt's passt binding (cmd/sidecars/network-passt-binding
		// domain/configurator.go) gives libvirt <source dev='eth0'/>, a
		// logFile, and <portForward proto='tcp|udp' dev='eth0'/>: without
		// ports, no ranges, which libvirt writes as "all" (its dev only
		// with an address); with Istio, its reserved ports excluded
		// before the VM's own.
		{"KubeVirt passt binding, no ports", "--one-off --socket /var/run/libvirt/qemu/run/passt/1-default_vmi-net0.socket " +
			"--pid /var/run/libvirt/qemu/run/passt/1-default_vmi-net0-passt.pid --log-file /var/run/kubevirt/passt.log " +
			"--interface eth0 --tcp-ports all --udp-ports all", "serve",
			func(c *cli) bool {
				o := c.Serve
				return o.Interface == "eth0" && o.LogFile == "/var/run/kubevirt/passt.log" &&
					checkModes("-t", o.TCPPorts, false, false) == nil && o.UDPPorts[0] == "all"
			}},
		{"KubeVirt passt binding, Istio and ports", "--one-off --socket /var/run/libvirt/qemu/run/passt/1-default_vmi-net0.socket " +
			"--pid /var/run/libvirt/qemu/run/passt/1-default_vmi-net0-passt.pid --log-file /var/run/kubevirt/passt.log " +
			"--interface eth0 --tcp-ports ~15000,~15001,~15004,~15006,~15008,~15009,~15020,~15021,~15053,~15090,8080 --udp-ports 5353", "serve",
			func(c *cli) bool {
				o := c.Serve
				_, err := portSpecs(append(o.TCPPorts, o.UDPPorts...))
				return err == nil && checkModes("-t", o.TCPPorts, false, false) == nil && strings.HasSuffix(o.TCPPorts[0], ",8080")
			}},
		// muvm (AsahiLinux/muvm crates/muvm/src/net.rs, 2026-07): one end
		// of a socketpair, dup'ed to any number; -p 8080:80 and
		// -p 127.0.0.1:5353:53/udp; then --passt-args, here its help's
		// example.
		{"muvm", "-q -f --fd 5 -t 8080-8080:80-80 -u 127.0.0.1/5353-5353:53-53 -l 'my log file.txt'", "serve",
			func(c *cli) bool {
				o := c.Serve
				_, err := portSpecs(append(o.TCPPorts, o.UDPPorts...))
				return o.Quiet && o.Foreground && o.Fd == 5 && o.LogFile == "my log file.txt" && err == nil &&
					o.UDPPorts[0] == "127.0.0.1/5353-5353:53-53"
			}},
		// krunai (slp/krunai src/passt.rs, 2026): IPv4 only, SSH forwarded;
		// it parses the start-up summary (tests/ TestKrunaiStartup).
		{"krunai", "--fd 7 --foreground -4 -t 2222:22", "serve",
			func(c *cli) bool {
				return c.Serve.Fd == 7 && c.Serve.Foreground && c.Serve.IPv4 && c.Serve.TCPPorts[0] == "2222:22"
			}},
		// virtual-dsm, qemus/qemu, dockur/windows (src/network.sh,
		// configurePasst, 2026): PASST_OPTS (empty) first, a dotted
		// netmask, forwards bound to the container's interface, the MAC
		// of their gateway; daemonized, and run again without -q to show
		// why if that fails.
		{"virtual-dsm network.sh", "-4 -a 172.30.0.2 -g 172.30.0.1 -n 255.255.255.0 -m 1500 -t %eth0/22,5000,5001 " +
			"-u %eth0/514 -H VirtualDSM -M 02:42:ac:1e:00:01 -P /var/run/passt.pid -s /tmp/passt.socket -l /var/log/passt.log -q", "serve",
			func(c *cli) bool {
				o := c.Serve
				ns, err := buildConfig(&o.NetOptions, hostState{"/nonexistent", nil})
				_, perr := portSpecs(append(o.TCPPorts, o.UDPPorts...))
				return err == nil && perr == nil && checkModes("-t", o.TCPPorts, false, false) == nil && ns.Addr4 == netip.MustParseAddr("172.30.0.2") && ns.Prefix4 == 24 &&
					ns.Gateway4 == netip.MustParseAddr("172.30.0.1") && ns.MTU == 1500 && ns.Hostname == "VirtualDSM" &&
					ns.OurMAC == [6]byte{2, 0x42, 0xac, 0x1e, 0, 1} && o.PidFile == "/var/run/passt.pid" && o.Quiet &&
					slices.Equal(o.TCPPorts, []string{"%eth0/22,5000,5001"})
			}},
		{"passt's --socket-path", "--socket-path /tmp/p.sock", "serve", func(c *cli) bool { return c.Serve.Socket == "/tmp/p.sock" }},
		{"README: run for a guest", "--socket /tmp/gopasst.sock", "serve",
			func(c *cli) bool { return c.Serve.Socket == "/tmp/gopasst.sock" && c.Serve.Fd == -1 }},
		{"README: control socket", "--control /run/user/1000/gopasst.ctl -t 2222:22", "serve",
			func(c *cli) bool { return c.Serve.Control != "" && c.Serve.TCPPorts[0] == "2222:22" }},
		{"README: vsock host", "--vsock 1024", "serve", func(c *cli) bool { return c.Serve.Vsock == "1024" }},
		{"README: hybrid vsock host", "-s /run/fc.vsock_1024", "serve", func(c *cli) bool { return c.Serve.Socket == "/run/fc.vsock_1024" }},
		{"README: ns", "ns -- sh -c 'ip addr; ip route'", "pasta <target>",
			func(c *cli) bool {
				return slices.Equal(c.Pasta.Target, []string{"--", "sh", "-c", "ip addr; ip route"})
			}},
		{"README: ns with a forward", "ns -t 8080 -- python3 -m http.server 8080", "pasta <target>",
			func(c *cli) bool {
				return c.Pasta.TCPPorts[0] == "8080" && strings.Join(c.Pasta.Target, " ") == "-- python3 -m http.server 8080"
			}},
		{"README: ctl add", "ctl /run/user/1000/gopasst.ctl add -t 8080:80 -u 5353", "ctl <path> <op>",
			func(c *cli) bool { return c.Ctl.Op == "add" && c.Ctl.TCP[0] == "8080:80" && c.Ctl.UDP[0] == "5353" }},
		{"README: ctl remove", "ctl /run/g.ctl remove -t 8080:80 --cmd-fwd 7000", "ctl <path> <op>",
			func(c *cli) bool { return c.Ctl.Op == "remove" && c.Ctl.CmdFwd[0] == "7000" }},
		{"README: guest", "guest --vsock 2:1024", "guest", func(c *cli) bool { return c.Guest.Vsock == "2:1024" && c.Guest.Tap == "tap0" }},
	} {
		var c cli
		var out bytes.Buffer
		ctx, done, code := parseArgs(&c, splitTest(tc.argv), &out, &out)
		if done {
			t.Errorf("%s: %q did not parse (exit %d): %s", tc.from, tc.argv, code, out.String())
			continue
		}
		if ctx.Command() != tc.cmd || !tc.check(&c) {
			t.Errorf("%s: %q selected %q with %+v", tc.from, tc.argv, ctx.Command(), c)
		}
	}
}

// TestPasstModeOptions: every option that upstream passt 2026.03 takes
// in passt mode (conf.c's table, each tried on its binary) parses, since
// a caller's option we refuse is a start-up failure. Its pasta-only
// options are refused there, as passt refuses them.
func TestPasstModeOptions(t *testing.T) {
	for _, argv := range []string{
		"-d", "--debug", "-q", "--quiet", "-f", "--foreground", "-e", "--stderr", "-l /tmp/l", "--log-file /tmp/l",
		"-s /tmp/s", "--socket /tmp/s", "--socket-path /tmp/s", "-F 3", "--fd 3", "-p /tmp/p", "--pcap /tmp/p",
		"-P /tmp/p", "--pid /tmp/p", "-m 1500", "--mtu 1500", "--mtu=", "-a 192.0.2.2", "--address 192.0.2.2", "-n 24",
		"--netmask 24", "-M 9a:55:9a:55:9a:56", "--mac-addr 9a:55:9a:55:9a:56", "-g 192.0.2.1", "--gateway 192.0.2.1",
		"-i lo", "--interface lo", "-o 192.0.2.9", "--outbound 192.0.2.9", "-D 192.0.2.53", "--dns 192.0.2.53",
		"-S ex.test", "--search ex.test", "-H vm", "--hostname vm", "--no-tcp", "--no-udp", "--no-icmp", "--no-dhcp",
		"--no-dhcpv6", "--no-ndp", "--no-ra", "--no-splice", "--freebind", "--no-map-gw", "-4", "--ipv4-only", "-6",
		"--ipv6-only", "-1", "--one-off", "-t 80", "--tcp-ports 80", "-u 53", "--udp-ports 53", "--no-dhcp-dns",
		"--no-dhcp-search", "--dns-forward 192.0.2.3", "--trace", "--runas 0", "--log-size 100000",
		"--outbound-if4 lo", "--outbound-if6 lo", "--map-host-loopback 192.0.2.7", "--map-guest-addr 192.0.2.8",
		"--dns-host 192.0.2.53", "--vhost-user", "--fqdn vm.test", "--repair-path none", "--migrate-exit",
		"--migrate-no-linger", "--stats 5",
	} {
		var c cli
		var out bytes.Buffer
		if _, done, code := parseArgs(&c, splitTest(argv), &out, &out); done {
			t.Errorf("%q did not parse (exit %d): %s", argv, code, out.String())
		}
	}
	for _, argv := range []string{"-I tap0", "--splice-only", "-T none", "--config-net", "--netns /run/n"} {
		var c cli
		var out bytes.Buffer
		if _, done, _ := parseArgs(&c, splitTest(argv), &out, &out); !done {
			t.Errorf("%q, pasta's only, parsed in passt mode", argv)
		}
	}
}

// TestAbbreviations: a long option may be shortened to any prefix that
// names it alone, as passt's and pasta's getopt_long take it ("--ipv4"
// for --ipv4-only, each tried on upstream's 2026.03 binaries); gopasst
// refused them all. A prefix of several is refused; words after the
// options are the command's, untouched.
func TestAbbreviations(t *testing.T) {
	for _, tc := range []struct {
		argv  string
		check func(*cli) bool
	}{
		{"pasta --ipv4 --config --ns-if tap0 --map-guest 169.254.1.2 --host-lo --quie --fore --trac --log-f /tmp/l --no-map",
			func(c *cli) bool {
				o := c.Pasta
				return o.IPv4 && o.ConfigNet && o.NSIfname == "tap0" && o.MapGuestAddr[0] == "169.254.1.2" && o.HostLoToNsLo &&
					o.Quiet && o.Foreground && o.Trace && o.LogFile == "/tmp/l" && o.NoMapGW
			}},
		{"pasta --ipv6 --ns-mac=02:00:00:00:00:01 -fP/tmp/p --dns-f 10.0.2.3 -- sh --ipv4",
			func(c *cli) bool {
				o := c.Pasta
				return o.IPv6 && o.NSMAC == "02:00:00:00:00:01" && o.PidFile == "/tmp/p" && o.DNSForward[0] == "10.0.2.3" &&
					slices.Equal(o.Target, []string{"--", "sh", "--ipv4"})
			}},
		{"--sock /tmp/s --one --vhost", func(c *cli) bool { return c.Serve.Socket == "/tmp/s" && c.Serve.OneOff && c.Serve.VhostUser }},
	} {
		var c cli
		var out bytes.Buffer
		if _, done, code := parseArgs(&c, splitTest(tc.argv), &out, &out); done || !tc.check(&c) {
			t.Errorf("%q: done %v, exit %d, %s, %+v", tc.argv, done, code, out.String(), c)
		}
	}
	for _, argv := range []string{"pasta --tcp auto", "--map 192.0.2.7", "pasta --no-dhcp-"} {
		var c cli
		var out bytes.Buffer
		if _, done, code := parseArgs(&c, splitTest(argv), &out, &out); !done || code != 1 || !strings.Contains(out.String(), "is ambiguous") {
			t.Errorf("%q: done %v, exit %d, %q; want ambiguous", argv, done, code, out.String())
		}
	}
}

// qemuPasstArgv is what QEMU 10.1's net_passt_decode_args (net/passt.c)
// gives passt for a -netdev passt with every option set, in its order:
// the options QEMU names, then param= words (here --debug and --pcap),
// then --pid and --fd. search= becomes one space-separated word, and
// tcp-ports= and udp-ports= one comma-separated word each. QEMU passes
// ipv4=off as --ipv6-only and ipv6=off as --ipv4-only; of both at once,
// the last counts, as in passt.
const qemuPasstArgv = "--vhost-user --quiet --mtu 1500 --address 192.0.2.2 --netmask 24 --mac-addr 9a:55:9a:55:9a:56 " +
	"--gateway 192.0.2.1 --interface lo --outbound 192.0.2.9 --outbound-if4 lo --outbound-if6 lo " +
	"--dns 192.0.2.53 --fqdn vm.example.test --no-dhcp-dns --no-dhcp-search --map-host-loopback 192.0.2.77 " +
	"--map-guest-addr 192.0.2.88 --dns-forward 192.0.2.3 --dns-host 192.0.2.53 --no-tcp --no-udp --no-icmp " +
	"--no-dhcp --no-ndp --no-dhcpv6 --no-ra --freebind --ipv6-only --ipv4-only --search 'example.test lab.example' " +
	"--tcp-ports 8080,8443:443 --udp-ports 5353,5354 --debug --pcap /tmp/q.pcap --pid /tmp/passt-X.pid --fd 3"

// TestQEMUArgvConfig: QEMU 10.1's options (qemuPasstArgv, less the
// forwards, which passt refuses with --no-tcp and --no-udp) become the
// engine's configuration with passt's meaning.
func TestQEMUArgvConfig(t *testing.T) {
	var c cli
	var out bytes.Buffer
	argv := strings.NewReplacer("--tcp-ports 8080,8443:443 --udp-ports 5353,5354 ", "").Replace(qemuPasstArgv)
	if _, done, _ := parseArgs(&c, splitTest(argv), &out, &out); done {
		t.Fatal(out.String())
	}
	ns, err := buildConfig(&c.Serve.NetOptions, hostState{"/nonexistent", nil})
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	cfg := ns.Config
	if cfg.MTU != 1500 || cfg.Addr4 != a("192.0.2.2") || cfg.Prefix4 != 24 || cfg.Gateway4 != a("192.0.2.1") ||
		cfg.Addr6.IsValid() || cfg.OurMAC != [6]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x56} {
		t.Errorf("addresses: %+v", cfg)
	}
	if cfg.Outbound4 != a("192.0.2.9") || cfg.OutboundIf4 != "lo" || cfg.OutboundIf6 != "lo" || !cfg.Freebind {
		t.Errorf("outbound: %v %q %q, freebind %v", cfg.Outbound4, cfg.OutboundIf4, cfg.OutboundIf6, cfg.Freebind)
	}
	if cfg.HostLoopback(false) != a("192.0.2.77") || cfg.MapGuestAddr4 != a("192.0.2.88") {
		t.Errorf("maps: host loopback %v, guest address %v", cfg.HostLoopback(false), cfg.MapGuestAddr4)
	}
	if !slices.Equal(cfg.DNS4, []netip.Addr{a("192.0.2.53")}) || cfg.DNSMap[a("192.0.2.3")] != netip.MustParseAddrPort("192.0.2.53:53") ||
		!slices.Equal(cfg.Search, []string{"example.test", "lab.example"}) || cfg.FQDN != "vm.example.test" {
		t.Errorf("DNS: %v, map %v, search %q", cfg.DNS4, cfg.DNSMap, cfg.Search)
	}
	if !(cfg.NoDHCPDNS && cfg.NoDHCPSearch && cfg.NoTCP && cfg.NoUDP && cfg.NoICMP && cfg.NoDHCP && cfg.NoNDP &&
		cfg.NoDHCPv6 && cfg.NoRA) || cfg.NoMTUOption {
		t.Errorf("switches: %+v", cfg)
	}
}

// TestFamilyLastWins: of -4 and -6, the last given counts, as in passt,
// whose getopt loop sets one and clears the other.
func TestFamilyLastWins(t *testing.T) {
	for argv, only4 := range map[string]bool{"-4 -6": false, "-6 -4": true, "--ipv4-only -f --ipv6-only": false,
		"--ipv6-only --ipv4-only": true, "pasta --config-net -6 -4 -f 1": true} {
		var c cli
		var out bytes.Buffer
		if _, done, _ := parseArgs(&c, splitTest(argv), &out, &out); done {
			t.Fatalf("%q: %s", argv, out.String())
		}
		o := &c.Serve.NetOptions
		if strings.HasPrefix(argv, "pasta") {
			o = &c.Pasta.NetOptions
		}
		if o.IPv4 != only4 || o.IPv6 == only4 {
			t.Errorf("%q: IPv4 only %v, IPv6 only %v", argv, o.IPv4, o.IPv6)
		}
	}
}

// splitTest splits a command line on spaces, keeping single-quoted words.
func splitTest(s string) []string {
	var out []string
	for len(s) > 0 {
		s = strings.TrimLeft(s, " ")
		if strings.HasPrefix(s, "'") {
			end := strings.Index(s[1:], "'") + 1
			out, s = append(out, s[1:end]), s[end+1:]
			continue
		}
		w, rest, _ := strings.Cut(s, " ")
		out, s = append(out, w), rest
	}
	return out
}

// TestHelp: gopasst's help lists its commands, and each command's help
// shows its own flags, not the others'.
func TestHelp(t *testing.T) {
	help := func(args ...string) string {
		var c cli
		var out bytes.Buffer
		if _, done, code := parseArgs(&c, args, &out, &out); !done || code != 0 {
			t.Fatalf("%v: done %v, exit %d", args, done, code)
		}
		return out.String()
	}
	top := help("--help")
	for _, cmd := range []string{"serve", "pasta", "ctl", "guest"} {
		if !strings.Contains(top, "  "+cmd+" ") {
			t.Errorf("gopasst --help does not list %s:\n%s", cmd, top)
		}
	}
	ns := help("ns", "--help")
	for _, serveOnly := range []string{"--socket", "--one-off", "--vhost-user", "--fd"} {
		if strings.Contains(ns, serveOnly) {
			t.Errorf("gopasst ns (pasta) --help offers %s", serveOnly)
		}
	}
	for _, args := range [][]string{{"serve", "--help"}, {"-f", "--help"}, {"-t", "22", "-h"}} {
		if serve := help(args...); !strings.Contains(serve, "--vhost-user") || !strings.Contains(serve, "--tcp-ports") {
			t.Errorf("gopasst %v lacks serve's flags:\n%s", args, serve)
		}
	}
}

// TestManPage: the committed gopasst.1 is what "gopasst man" writes now
// (run "make man" after changing an option), and groff renders it
// without a warning.
func TestManPage(t *testing.T) {
	var c cli
	var out bytes.Buffer
	ctx, done, _ := parseArgs(&c, []string{"man"}, &out, &out)
	if done {
		t.Fatal(out.String())
	}
	writeMan(&out, ctx.Model)
	committed, err := os.ReadFile("../../gopasst.1")
	if err != nil || !bytes.Equal(committed, out.Bytes()) {
		t.Errorf("gopasst.1 is not current (%v): run make man", err)
	}
	if _, err := exec.LookPath("groff"); err != nil {
		t.Skip("no groff to render it")
	}
	render := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
	render.Stdin = &out
	if msg, err := render.CombinedOutput(); err != nil || len(msg) > 0 {
		t.Errorf("groff: %v\n%s", err, msg)
	}
}

// TestPrintCapabilities: what the vhost-user specification asks a
// back-end to print, as JSON, before anything else happens.
func TestPrintCapabilities(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"--print-capabilities"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var caps map[string]any
	if err := json.Unmarshal(out.Bytes(), &caps); err != nil || caps["type"] != "net" || len(caps) != 1 {
		t.Errorf("%q (%v), want {\"type\": \"net\"}", out.String(), err)
	}
}

// TestPastaNameModes: as pasta, --vhost-user is passt's vhost-user mode
// and --print-capabilities prints them, as upstream; anything else, even
// those words after "--" (the command's own), is pasta's.
func TestPastaNameModes(t *testing.T) {
	for argv, pasta := range map[string]bool{
		"--vhost-user -s /tmp/s": false, "--print-capabilities": false, "-f --vhost-user": false,
		"-f": true, "-- sh --vhost-user": true, "--config-net -- env --print-capabilities": true,
	} {
		args := modeArgs("/usr/bin/pasta", splitTest(argv))
		if got := len(args) > 0 && args[0] == "pasta"; got != pasta {
			t.Errorf("pasta %s: pasta mode %v, want %v", argv, got, pasta)
		}
		if got := modeArgs("/usr/bin/passt", splitTest(argv)); slices.Contains(got, "pasta") {
			t.Errorf("passt %s: %q", argv, got)
		}
	}
	var out, errOut bytes.Buffer
	if code := run(modeArgs("pasta", []string{"--print-capabilities"}), &out, &errOut); code != 0 || !strings.Contains(out.String(), `"net"`) {
		t.Errorf("pasta --print-capabilities: exit %d, %q %q", code, out.String(), errOut.String())
	}
}

// TestPasstNameHelp: "passt --help" lists passt's options, as passt's
// does, not gopasst's commands.
func TestPasstNameHelp(t *testing.T) {
	for _, h := range []string{"-h", "--help"} {
		var out, errOut bytes.Buffer
		code := run(modeArgs("/usr/bin/passt", []string{h}), &out, &errOut)
		if code != 0 || !strings.Contains(out.String(), "--vhost-user") || !strings.Contains(out.String(), "--tcp-ports") {
			t.Errorf("passt %s: exit %d, %q %q", h, code, out.String(), errOut.String())
		}
	}
}

// TestPastaModeOptions: every option upstream's pasta takes (conf.c's
// table, each tried on its 2026.03 binary) parses in pasta mode, and those
// it refuses there are refused (but for --no-dhcp-dns and
// --no-dhcp-search, which pasta's defaults make moot). pasta's --fd, undocumented there (passt.1
// has it among passt's options), is passt's only.
func TestPastaModeOptions(t *testing.T) {
	for _, argv := range []string{
		"-d", "--debug", "-q", "--quiet", "-f", "--foreground", "-e", "--stderr", "-l /tmp/l", "--log-file /tmp/l",
		"-I tap0", "--ns-ifname tap0", "-p /tmp/p", "--pcap /tmp/p", "-P /tmp/p", "--pid /tmp/p", "-m 1500",
		"--mtu 1500", "--mtu=", "--mtu 0x5dc", "-a 192.0.2.2", "--address 192.0.2.2", "-n 24", "--netmask 24",
		"-M 9a:55:9a:55:9a:56", "--mac-addr 9a:55:9a:55:9a:56", "-g 192.0.2.1", "--gateway 192.0.2.1", "-i lo",
		"--interface lo", "-o 192.0.2.9", "--outbound 192.0.2.9", "-D 192.0.2.53", "--dns 192.0.2.53", "-S ex.test",
		"--search ex.test", "-H vm", "--hostname vm", "--no-tcp", "--no-udp", "--no-icmp", "--no-dhcp",
		"--no-dhcpv6", "--no-ndp", "--no-ra", "--no-splice", "--freebind", "--no-map-gw", "-4", "--ipv4-only",
		"-6", "--ipv6-only", "-t 80", "--tcp-ports 80", "-u 53", "--udp-ports 53", "-T 80", "--tcp-ns 80",
		"-U 53", "--udp-ns 53", "--userns /proc/1/ns/user", "--netns /run/n", "--ns-mac-addr 9a:55:9a:55:9a:57",
		"--dhcp-dns", "--dhcp-search", "--dns-forward 192.0.2.3", "--no-netns-quit", "--trace", "--runas 0",
		"--log-size 100000", "--outbound-if4 lo", "--outbound-if6 lo", "--config-net", "--no-copy-routes",
		"--no-copy-addrs", "--netns-only", "--map-host-loopback 192.0.2.7", "--map-guest-addr 192.0.2.8",
		"--host-lo-to-ns-lo", "--dns-host 192.0.2.53", "--fqdn vm.test", "--repair-path none", "--stats 5",
		"--splice-only",
	} {
		var c cli
		var out bytes.Buffer
		if _, done, code := parseArgs(&c, append([]string{"pasta"}, splitTest(argv)...), &out, &out); done {
			t.Errorf("pasta %q did not parse (exit %d): %s", argv, code, out.String())
		}
	}
	for _, argv := range []string{"-s /tmp/s", "--socket /tmp/s", "-1", "--one-off", "--migrate-exit", "--migrate-no-linger", "-m abc"} {
		var c cli
		var out bytes.Buffer
		if _, done, _ := parseArgs(&c, append([]string{"pasta"}, splitTest(argv)...), &out, &out); !done {
			t.Errorf("pasta %q, refused upstream, parsed", argv)
		}
	}
	var out bytes.Buffer
	if code := run(modeArgs("pasta", splitTest("--repair-path /tmp/r -f -- true")), &out, &out); code != 1 ||
		!strings.Contains(out.String(), "vhost-user mode only") {
		t.Errorf("pasta --repair-path /tmp/r: exit %d, %q", code, out.String())
	}
	out.Reset()
	if code := run(modeArgs("pasta", splitTest("--splice-only --no-splice -f -- true")), &out, &out); code != 1 ||
		!strings.Contains(out.String(), "--splice-only is incompatible with --no-splice") {
		t.Errorf("pasta --splice-only --no-splice: exit %d, %q", code, out.String())
	}
}
