package tests

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Differential tests of port forwarding: the same command line to
// gopasst and to upstream passt and pasta 2026.03, each in namespaces of
// its own; what each refuses, which sockets each binds (ss), and where a
// connection through a forward ends up.

// fwdOutcome is what one passt or pasta made of one command line: that it
// exited (at once, as for a refused option), or the listening sockets it
// bound on the host and, in pasta mode, in the namespace.
type fwdOutcome struct {
	exited   bool
	host, ns []string // "tcp 127.0.0.1:8080", sorted; ss's "*" is dual-stack
}

func (o fwdOutcome) String() string {
	if o.exited {
		return "refused"
	}
	return fmt.Sprintf("host %s; namespace %s", summary(o.host), summary(o.ns))
}

// summary shortens the thousands of sockets of "all" for a message.
func summary(l []string) string {
	if len(l) > 8 {
		return fmt.Sprintf("%d sockets: %s ... %s", len(l), strings.Join(l[:4], ", "), strings.Join(l[len(l)-4:], ", "))
	}
	return "[" + strings.Join(l, ", ") + "]"
}

// listeners are the listening sockets in ns, protocol and local address.
func listeners(t *testing.T, ns *Netns) []string {
	t.Helper()
	out, err := ns.Cmd("ss", "-ltnuH").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	var l []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) >= 5 {
			l = append(l, f[0]+" "+f[4])
		}
	}
	slices.Sort(l)
	return l
}

// settled waits until the listeners in each namespace stay the same for
// three looks in a row (the binds of "all") and returns them.
func settled(t *testing.T, nss ...*Netns) [][]string {
	t.Helper()
	var last [][]string
	same := 0
	for deadline := time.Now().Add(20 * time.Second); same < 3 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		var now [][]string
		for _, ns := range nss {
			now = append(now, listeners(t, ns))
		}
		if slices.EqualFunc(now, last, slices.Equal) {
			same++
		} else {
			same = 0
		}
		last = now
	}
	return last
}

// runFwd starts cmd and waits until ready says it is up (the outcome is
// then the listeners of host and, if not nil, ns) or it exits (refused).
func runFwd(t *testing.T, cmd *exec.Cmd, ready func() bool, host, ns *Netns) fwdOutcome {
	t.Helper()
	var log syncBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}()
	gone := func() bool {
		select {
		case <-exited:
			return true
		default:
			return false
		}
	}
	refused := func() fwdOutcome {
		if cmd.ProcessState.ExitCode() == 0 {
			t.Errorf("%v exited 0 at once: %s", cmd.Args, log.String())
		}
		return fwdOutcome{exited: true}
	}
	waitLong(t, "start-up or exit", 20*time.Second, func() bool { return gone() || ready() })
	if gone() {
		return refused()
	}
	nss := []*Netns{host}
	if ns != nil {
		nss = append(nss, ns)
	}
	// gopasst binds after it is up, and exits if a bind fails; pasta's
	// auto scans each second.
	if ns != nil {
		time.Sleep(1200 * time.Millisecond)
	}
	l := settled(t, nss...)
	if gone() {
		return refused()
	}
	o := fwdOutcome{host: l[0]}
	if ns != nil {
		o.ns = l[1]
	}
	return o
}

// upstreamPasta is upstream's pasta, beside its passt.
func upstreamPasta(t *testing.T) string {
	p := filepath.Join(filepath.Dir(upstreamPasst(t)), "pasta")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("no upstream pasta: %v", err)
	}
	return p
}

// fwdHost is a host namespace for the forwarding tests: newHost's, with
// every port bindable by anyone, since passt binds as nobody, and all but
// 1558 ports ephemeral, so that "all" fits the open file limit, which
// passt does not check (it fails the whole range past it).
func fwdHost(t *testing.T) *Netns {
	h := newHost(t, WorldOpts{})
	h.Sysctl(t, "net.ipv4.ip_unprivileged_port_start", "0")
	h.Sysctl(t, "net.ipv4.ip_local_port_range", "1024 65000")
	return h
}

// passtFwd runs bin in passt mode in host with args.
func passtFwd(t *testing.T, host *Netns, bin string, args []string) fwdOutcome {
	sock := filepath.Join(sharedDir(t), "s")
	cmd := host.Cmd(bin, append([]string{"-f", "-s", sock}, args...)...)
	return runFwd(t, cmd, func() bool { _, err := os.Stat(sock); return err == nil }, host, nil)
}

// pastaFwd runs pasta (a link named pasta) with --config-net for a new
// namespace with args, from a new host namespace; prepare sets up both
// before pasta starts. Upstream's pasta, started as root, runs as root
// with --runas 0; without it, as nobody, it may not join the namespace.
func pastaFwd(t *testing.T, pasta string, upstream bool, args []string, prepare func(t *testing.T, host, ns *Netns)) fwdOutcome {
	host := fwdHost(t)
	ns := newNetns(t, "gpn")
	ns.Sysctl(t, "net.ipv4.ip_unprivileged_port_start", "0")
	if prepare != nil {
		prepare(t, host, ns)
	}
	argv := []string{"-f", "--config-net", "--netns", "/run/netns/" + ns.Name}
	if upstream {
		argv = append(argv, "--runas", "0")
	}
	cmd := host.Cmd(pasta, append(argv, args...)...)
	return runFwd(t, cmd, func() bool { return configured(ns) }, host, ns)
}

// configured tells whether pasta gave ns the host's address, of either
// family.
func configured(ns *Netns) bool {
	out, _ := ns.Cmd("ip", "addr").Output()
	return strings.Contains(string(out), hostAddr) || strings.Contains(string(out), host6Addr)
}

// fwdKnownDiffs are the differences judged harmless, by case, with the
// reason.
var fwdKnownDiffs = map[string]string{
	"passt/space":                         "passt reads ports with strtoul, which skips leading blanks; no caller writes them",
	"passt/plus":                          "passt reads ports with strtoul, which takes a sign; no caller writes one",
	"passt/to-port-0":                     "passt forwards to guest port 0, where nothing can listen; gopasst refuses",
	"pasta/auto-then-port":                "gopasst takes auto beside ports, to map some (its tests use it); pasta refuses",
	"pasta-connect/splice-only/tcp-addr4": "with no tap, a connection from a host address has nowhere to go: pasta accepts it and leaves it unanswered, open; gopasst resets it at once",
	"pasta-connect/splice-only/tcp-addr6": "as tcp-addr4",
}

// passtFwdCases are passt-mode command lines: the forwards of -t and -u,
// and what passt refuses.
var passtFwdCases = []struct{ name, args string }{
	{"single", "-t 18080 -u 18081"},
	{"range", "-t 18000-18005 -u 18010"},
	{"map", "-t 18080:80"},
	{"range-map", "-t 18000-18002:19000-19002"},
	{"exclude", "-t 18000-18005,~18002"},
	{"exclude-range", "-t 18000-18005,~18002-18003 -u ~18001,18000-18003"},
	{"exclude-only", "-t ~1000-1002"},
	{"exclude-0", "-t ~0,18005"},
	{"all", "-u all"},
	{"none", "-t none -u none"},
	{"addr4", "-t 127.0.0.1/18080"},
	{"addr6", "-t [::1]/18080"},
	{"addr4-brackets", "-t [127.0.0.1]/18080"},
	{"any-addr", "-t [::]/18080 -t 0.0.0.0/18080 -u ::/18081"},
	{"iface", "-t %lo/18080"},
	{"addr-iface", "-t 127.0.0.1%lo/18080 -u ::1%lo/18080"},
	{"list", "-t 18080,18081:80 -t 18082 --tcp-ports 18083"},
	{"both-families", "-t 127.0.0.1/18080 -t ::1/18080"},
	{"tcp-udp", "-t 18080 -u 18080"},
	{"v4", "-4 -t 18080 -u 18081"},
	{"v6", "-6 -t 18080 -u 18081"},
	{"v4-addr", "-4 -t 127.0.0.1/18080"},
	{"space", "-t  18080"},
	{"plus", "-t +18080"},
	{"to-port-0", "-t 18080:0"},
	// Refused.
	{"port-0", "-t 0"},
	{"range-0", "-t 0-5"},
	{"too-big", "-t 65536"},
	{"backwards", "-t 18080-18070"},
	{"map-sizes", "-t 1-10:20-25"},
	{"map-range-to-one", "-t 1-10:20"},
	{"map-one-to-range", "-t 10:20-25"},
	{"exclude-map", "-t ~5:6"},
	{"garbage", "-t abc"},
	{"empty-item", "-t 80,,81"},
	{"trailing-comma", "-t 80,"},
	{"bad-addr", "-t 1.2.3/80"},
	{"no-addr", "-t /80"},
	{"empty-iface", "-t 1.2.3.4%/80"},
	{"long-iface", "-t %verylonginterfacename/80"},
	{"no-ports", "-t 1.2.3.4/"},
	{"no-slash", "-t 1.2.3.4%lo"},
	{"overlap", "-t 18000-18002,18001"},
	{"repeat", "-t 18080 -t 18080"},
	{"overlap-addr", "-t 18080 -t 127.0.0.1/18080"},
	{"exclude-overlap", "-t ~1000-1002,~1001"},
	{"exclude-all", "-t 18000-18005,~18000-18005"},
	{"auto", "-t auto"},
	{"none-then-port", "-t none -t 80"},
	{"port-then-none", "-t 80 -t none"},
	{"none-twice", "-u none -u none"},
	{"all-then-port", "-t all -t 80"},
	{"v4-only-addr6", "-4 -t ::1/80"},
	{"v6-only-addr4", "-6 -t 127.0.0.1/80"},
	{"no-tcp", "--no-tcp -t 80"},
	{"no-udp", "--no-udp -u 53"},
	{"not-local", "-t 192.0.2.9/18080"},
	{"busy", "-t 18099"},
}

// TestDiffForwardPasst: which sockets passt mode binds for -t and -u,
// and what it refuses, as upstream passt (GOPASST_DIFF selects cases).
func TestDiffForwardPasst(t *testing.T) {
	needRoot(t)
	needReachable(t)
	bins := [2]string{upstreamPasst(t), gopasstBin}
	var hosts [2]*Netns
	var base [2][]string
	for i := range hosts {
		hosts[i] = fwdHost(t)
		// The port of case "busy" is taken.
		busy := hosts[i].Listen(t, "tcp", ":18099")
		defer busy.Close()
		base[i] = listeners(t, hosts[i])
	}
	for _, c := range passtFwdCases {
		if sel := os.Getenv("GOPASST_DIFF"); sel != "" && !slices.Contains(strings.Split(sel, ","), c.name) {
			continue
		}
		args := strings.Split(c.args, " ")
		if c.name == "space" {
			args = []string{"-t", " 18080"}
		}
		t.Run(c.name, func(t *testing.T) {
			got := bothWays(t, func(t *testing.T, i int) fwdOutcome {
				o := passtFwd(t, hosts[i], bins[i], args)
				o.host = slices.DeleteFunc(o.host, func(l string) bool { return slices.Contains(base[i], l) })
				return o
			})
			compareFwd(t, "passt/"+c.name, c.args, got)
		})
	}
}

// bothWays runs a case for upstream (0) and gopasst (1) at once, each in
// a subtest of its own, and returns what each made of it.
func bothWays(t *testing.T, run func(t *testing.T, i int) fwdOutcome) [2]fwdOutcome {
	var got [2]fwdOutcome
	t.Run("run", func(t *testing.T) {
		for i, name := range []string{"upstream", "gopasst"} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				got[i] = run(t, i)
			})
		}
	})
	return got
}

// compareFwd fails on a difference that is not known, and logs one that is.
func compareFwd(t *testing.T, name, args string, got [2]fwdOutcome) {
	t.Helper()
	if got[0].String() == got[1].String() {
		return
	}
	if r := fwdKnownDiffs[name]; r != "" {
		t.Logf("%s (%s): known difference: %s", name, args, r)
		return
	}
	t.Errorf("%s (%s):\nupstream: %v\n gopasst: %v", name, args, got[0], got[1])
}

// pastaFwdCases are pasta's command lines; auto runs with a TCP server
// on port 17070 in the namespace and one on 17071 on the host.
var pastaFwdCases = []struct{ name, args string }{
	{"both-ways", "-t 18080 -u 18081 -T none -U none"},
	{"none", "-t none -u none -T none -U none"},
	{"addr", "-t 127.0.0.1/18080 -t [::1]/18081 -u %lo/18082 -T none -U none"},
	{"ns-side", "-t none -u none -T 19090,19092-19093:19192-19193 -U 19091"},
	{"ns-side-v4", "-4 -t none -u none -T 19090 -U none"},
	{"ns-side-v6", "-6 -t none -u none -T 19090 -U none"},
	{"v4", "-4 -t 18080 -u none -T none -U none"},
	{"auto-tcp", "-t auto -u none -T none -U none"},
	{"auto-tcp-udp", "-t auto -u auto -T none -U none"},
	{"auto-back", "-t none -u none -T auto -U none"},
	{"auto-udp-mirror", "-t 18080 -u none"},
	// Refused.
	{"all", "-t all"},
	{"ns-side-addr", "-T 127.0.0.1/19090"},
	{"ns-side-iface", "-U %lo/19090"},
	{"auto-then-port", "-t auto -t 80"},
	{"port-then-none", "-t 18080 -t none"},
	{"port-0", "-T 0"},
	{"map-sizes", "-U 1-10:20"},
	{"exclude-overlap", "-t ~1000-1002,~1001"},
}

// TestDiffForwardPasta: which sockets pasta binds on the host and in the
// namespace for -t, -u, -T and -U, and what it refuses, as upstream pasta.
func TestDiffForwardPasta(t *testing.T) {
	needRoot(t)
	upstream := upstreamPasta(t)
	ours := pastaLink(t)
	servers := func(t *testing.T, host, ns *Netns) {
		for _, s := range []struct {
			ns   *Netns
			addr string
		}{{ns, ":17070"}, {host, "127.0.0.1:17071"}} {
			l := s.ns.Listen(t, "tcp", s.addr)
			t.Cleanup(func() { l.Close() })
		}
	}
	for _, c := range pastaFwdCases {
		if sel := os.Getenv("GOPASST_DIFF"); sel != "" && !slices.Contains(strings.Split(sel, ","), c.name) {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			got := bothWays(t, func(t *testing.T, i int) fwdOutcome {
				o := pastaFwd(t, []string{upstream, ours}[i], i == 0, strings.Split(c.args, " "), servers)
				// Our own servers.
				o.host = slices.DeleteFunc(o.host, func(l string) bool { return strings.HasSuffix(l, ":17071") })
				o.ns = slices.DeleteFunc(o.ns, func(l string) bool { return l == "tcp *:17070" })
				return o
			})
			compareFwd(t, "pasta/"+c.name, c.args, got)
		})
	}
}

// fwdAnswer is what a connection to addr from ns got: the server's
// "PORT:" and the echo of "hi", or the error.
func fwdAnswer(ns *Netns, network, addr string) string {
	c, err := ns.Dial(network, addr, 3*time.Second)
	if err != nil {
		return "error: " + errString(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("hi")); err != nil {
		return "error: " + errString(err)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	b := make([]byte, 100)
	n, err := c.Read(b)
	if n == 0 && err != nil {
		return "error: " + errString(err)
	}
	return string(b[:n])
}

// errString drops what is specific to one connection, the addresses.
func errString(err error) string {
	if oe, ok := err.(*net.OpError); ok {
		return oe.Op + ": " + oe.Err.Error()
	}
	return err.Error()
}

// serveFwd answers each TCP connection and UDP datagram on port in ns
// with "PORT:" and the echo of what came.
func serveFwd(t *testing.T, ns *Netns, port int) {
	serveFwdAt(t, ns, "", port, fmt.Sprint(port))
}

// serveFwdAt is serveFwd on one address, answering with "TAG:".
func serveFwdAt(t *testing.T, ns *Netns, addr string, port int, tag string) {
	p := net.JoinHostPort(addr, fmt.Sprint(port))
	acceptLoop(ns.Listen(t, "tcp", p), func(c net.Conn) {
		defer c.Close()
		b := make([]byte, 100)
		n, _ := c.Read(b)
		fmt.Fprintf(c, "%s:%s", tag, b[:n])
	})
	echoPackets(ns.ListenPacket(t, "udp", p), tag+":")
}

// TestDiffForwardPastaConnect: where connections and datagrams through
// pasta's forwards arrive, each way, from each address, as upstream; and
// with --splice-only, which makes no tap: the namespace has its loopback
// alone, and only what comes from the host's loopback is forwarded.
func TestDiffForwardPastaConnect(t *testing.T) {
	needRoot(t)
	args := strings.Split("-t 18080:8080,18081 -u 15353:5353 -T 19090:9090 -U 19091:9091", " ")
	probes := []struct {
		name, from, network, addr string
	}{
		{"tcp-lo4", "host", "tcp", "127.0.0.1:18080"},
		{"tcp-lo6", "host", "tcp", "[::1]:18080"},
		{"tcp-addr4", "host", "tcp", hostAddr + ":18080"},
		{"tcp-addr6", "host", "tcp", "[" + host6Addr + "]:18081"},
		{"tcp-unforwarded", "host", "tcp", "127.0.0.1:18082"},
		{"udp-lo4", "host", "udp", "127.0.0.1:15353"},
		{"udp-lo6", "host", "udp", "[::1]:15353"},
		{"udp-addr4", "host", "udp", hostAddr + ":15353"},
		{"tcp-ns-lo4", "ns", "tcp", "127.0.0.1:19090"},
		{"tcp-ns-lo6", "ns", "tcp", "[::1]:19090"},
		{"udp-ns-lo4", "ns", "udp", "127.0.0.1:19091"},
		{"udp-ns-lo6", "ns", "udp", "[::1]:19091"},
		{"tcp-ns-own", "ns", "tcp", hostAddr + ":19090"},
		{"tcp-ns-lo4-other", "ns", "tcp", "127.0.0.2:19090"},
		{"udp-ns-lo4-other", "ns", "udp", "127.0.0.2:19091"},
		{"ns-links", "ns", "links", ""},
	}
	for _, mode := range []string{"tap", "splice-only"} {
		t.Run(mode, func(t *testing.T) {
			argv := []string{"-f", "--config-net"}
			if mode == "splice-only" {
				argv = append(argv, "--splice-only")
			}
			var got [2]map[string]string
			for i, bin := range []string{upstreamPasta(t), pastaLink(t)} {
				host := fwdHost(t)
				ns := newNetns(t, "gpn")
				for _, p := range []int{8080, 18081, 5353} {
					serveFwd(t, ns, p)
				}
				// Which loopback address of the host a forward reaches.
				for _, p := range []int{9090, 9091} {
					for _, a := range []string{"127.0.0.1", "127.0.0.2", "::1"} {
						serveFwdAt(t, host, a, p, fmt.Sprint(p, "@", a))
					}
				}
				argv := append(argv, "--netns", "/run/netns/"+ns.Name)
				if i == 0 {
					argv = append(argv, "--runas", "0")
				}
				cmd := host.Cmd(bin, append(argv, args...)...)
				got[i] = runFwdThen(t, cmd, func() map[string]string {
					m := map[string]string{}
					for _, p := range probes {
						from := host
						if p.from == "ns" {
							from = ns
						}
						if p.network == "links" {
							m[p.name] = strings.Join(linkNames(from), " ")
							continue
						}
						m[p.name] = fwdAnswer(from, p.network, p.addr)
					}
					return m
				})
			}
			for _, p := range probes {
				up, ours := got[0][p.name], got[1][p.name]
				t.Logf("%s (%s %s from the %s): upstream %q, gopasst %q", p.name, p.network, p.addr, p.from, up, ours)
				if up == ours {
					continue
				}
				if r := fwdKnownDiffs["pasta-connect/"+mode+"/"+p.name]; r != "" {
					t.Logf("%s: upstream %q, gopasst %q: known difference: %s", p.name, up, ours, r)
					continue
				}
				t.Errorf("%s (%s %s from the %s): upstream %q, gopasst %q", p.name, p.network, p.addr, p.from, up, ours)
			}
		})
	}
}

// linkNames are the names of ns's network interfaces.
func linkNames(ns *Netns) []string {
	out, _ := ns.Cmd("ip", "-o", "link").Output()
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			names = append(names, strings.TrimSuffix(strings.Split(f[1], "@")[0], ":"))
		}
	}
	return names
}

// runFwdThen starts pasta, waits until it is ready (its PID file, which
// both write once the namespace is configured and the forwards bound),
// and returns what probe saw then.
func runFwdThen[T any](t *testing.T, cmd *exec.Cmd, probe func() T) T {
	t.Helper()
	var log syncBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	pid := filepath.Join(t.TempDir(), "pid")
	cmd.Args = append(cmd.Args, "--pid", pid)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	waitLong(t, "pasta to be ready", 20*time.Second, func() bool {
		b, _ := os.ReadFile(pid)
		return len(b) > 0 && b[len(b)-1] == '\n'
	})
	return probe()
}

// TestDiffForwardPasstConnect: a host client reaches the guest port
// mapped as upstream passt maps it, from each address, and a UDP reply
// comes back, through a guest attached as in the other tests.
func TestDiffForwardPasstConnect(t *testing.T) {
	needRoot(t)
	needReachable(t)
	args := []string{"-t", "18080:8080,18081", "-t", "127.0.0.1/18082:8080", "-u", "15353:5353"}
	probes := []struct{ network, addr string }{
		{"tcp", "127.0.0.1:18080"}, {"tcp", "[::1]:18080"}, {"tcp", hostAddr + ":18080"},
		{"tcp", "[" + host6Addr + "]:18081"}, {"tcp", "127.0.0.1:18082"}, {"tcp", hostAddr + ":18082"},
		{"tcp", "127.0.0.1:18083"}, {"udp", "127.0.0.1:15353"}, {"udp", "[::1]:15353"},
	}
	var got [2][]string
	for i, o := range []WorldOpts{
		{Backend: append([]string{upstreamPasst(t), "-f", "-s", "{sock}"}, args...)},
		{Args: args},
	} {
		w := newWorld(t, o)
		for _, p := range []int{8080, 18081, 5353} {
			serveFwd(t, w.Guest, p)
		}
		// passt learns the guest's IPv6 address from what it sends:
		// once SLAAC gave it one, a datagram out.
		waitFor(t, "the guest's global IPv6 address", func() bool {
			out, _ := w.Guest.Cmd("ip", "-6", "addr", "show", "scope", "global").Output()
			return strings.Contains(string(out), "inet6") && !strings.Contains(string(out), "tentative")
		})
		if c, err := w.Guest.Dial("udp", "["+host6GW+"]:9", time.Second); err == nil {
			c.Write([]byte("x"))
			c.Close()
		}
		for _, p := range probes {
			got[i] = append(got[i], fwdAnswer(w.Host, p.network, p.addr))
		}
	}
	for i, p := range probes {
		t.Logf("%s %s: upstream %q, gopasst %q", p.network, p.addr, got[0][i], got[1][i])
		if got[0][i] != got[1][i] {
			t.Errorf("%s %s: upstream %q, gopasst %q", p.network, p.addr, got[0][i], got[1][i])
		}
	}
}
