package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/rtnl"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// The namespace agent: gopasst, run again inside the target namespaces.
// Joining a user namespace takes a single-threaded process, which a Go
// program never is, so util-linux's nsenter joins them and executes the
// agent there: root in the namespace's user namespace, it makes the tap,
// configures it (--config-net), and then stays, answering the helper's
// requests for the namespace's side: sockets bound there (-T, -U) and its
// /proc/net tables (auto). It keeps CAP_NET_BIND_SERVICE alone, serves
// under a seccomp filter of its own, and ends with the helper.

const envPastaAgent = "GOPASST_PASTA_AGENT" // set in the agent

const agentSock = 3 // the agent's end of its socket to the helper

// agentPlan is the agent's nsPlan, as JSON, in a memfd: not in its
// environment, where one string may take 128 KiB, which a host's
// template with a thousand routes passed, and nsenter's exec failed
// (E2BIG).
const agentPlan = 4

const agentSpliceSock = 5 // the agent's end of its socket to the engine, for the loopback path

const envAgentTap = "GOPASST_PASTA_AGENT_TAP" // the agent, executed again: its tap

// nsPlan is what the agent sets up in the namespace.
type nsPlan struct {
	Ifname string
	MAC    string       // --ns-mac-addr, or "" for the kernel's
	NoTap  bool         // --splice-only: loopback alone, and nothing to configure
	Config bool         // --config-net: the rest applies
	MTU    int          // 0 (-m 0) leaves the kernel's, as pasta does
	Addrs  []rtnl.Addr  // Index is filled in by the agent
	Routes []rtnl.Route // likewise; on-link routes come first
	Splice *spliceRules // the loopback path's, nil with --no-splice
}

// planNS decides the namespace's interface, addresses and routes, from
// the options and the host's template interfaces, as pasta does.
func planNS(o *pastaOptions, cfg netSetup) (nsPlan, error) {
	if4, if6 := cfg.ifname4, cfg.ifname6
	p := nsPlan{Ifname: cmp.Or(o.NSIfname, if4, if6, "tap0"), MAC: o.NSMAC,
		NoTap: o.SpliceOnly, Config: o.ConfigNet && !o.SpliceOnly, MTU: cfg.MTU}
	if cfg.NoMTUOption {
		p.MTU = 0
	}
	if len(o.NSIfname) >= unix.IFNAMSIZ {
		// As upstream refuses it, named: the tap's ioctl said only
		// "invalid argument", from the namespace's set-up.
		return p, fmt.Errorf("--ns-ifname: invalid interface name %q: longer than %d characters", o.NSIfname, unix.IFNAMSIZ-1)
	}
	if o.NSMAC != "" {
		if _, err := net.ParseMAC(o.NSMAC); err != nil {
			return p, fmt.Errorf("--ns-mac-addr: %v", err)
		}
	}
	if !p.Config {
		return p, nil
	}
	a4, a6, _, _ := parseAddress(o.Address) // ADDR/PLEN too, as buildConfig took it
	g4, g6, _ := parseAddrs("gateway", o.Gateway)
	var nl *rtnl.Conn
	if !o.NoCopyAddrs || !o.NoCopyRoutes {
		c, err := rtnl.Open()
		if err != nil {
			return p, err
		}
		defer c.Close()
		nl = c
	}
	gw4 := cfg.Gateway4
	if cfg.gw4Local {
		gw4 = netip.Addr{} // the namespace mirrors the host, which routes through no gateway
	}
	families := []struct {
		family     int
		on         bool
		addr, gw   netip.Addr
		bits       int
		ifname     string
		addrs, gws []netip.Addr
	}{
		{unix.AF_INET, cfg.Addr4.IsValid(), cfg.Addr4, gw4, cfg.Prefix4, if4, a4, g4},
		{unix.AF_INET6, cfg.Addr6.IsValid() || cfg.Local6, cfg.Addr6, cfg.Gateway6, 64, if6, a6, g6},
	}
	for _, f := range families {
		if !f.on {
			continue
		}
		index := 0
		if ifi, err := net.InterfaceByName(f.ifname); err == nil {
			index = ifi.Index
		}
		var addrs []rtnl.Addr
		if !o.NoCopyAddrs && len(f.addrs) == 0 && index > 0 {
			host, err := nl.Addrs(f.family, index)
			if err != nil {
				return p, fmt.Errorf("host addresses: %v", err)
			}
			// As pasta: not the link-local ones nor the deprecated ones
			// (old temporary addresses), with their flags (noprefixroute).
			for _, a := range host {
				if !a.Prefix.Addr().IsLinkLocalUnicast() && a.Flags&unix.IFA_F_DEPRECATED == 0 {
					addrs = append(addrs, rtnl.Addr{Prefix: a.Prefix, Flags: a.Flags | unix.IFA_F_NODAD})
				}
			}
		}
		if len(addrs) == 0 && f.addr.IsValid() { // none in IPv6 local mode: the link-local one
			addrs = []rtnl.Addr{{Prefix: netip.PrefixFrom(f.addr, f.bits), Flags: unix.IFA_F_NODAD}}
		}
		p.Addrs = append(p.Addrs, addrs...)
		var routes []rtnl.Route
		if !o.NoCopyRoutes && len(f.gws) == 0 && index > 0 {
			host, err := nl.Routes(f.family, index)
			if err != nil {
				return p, fmt.Errorf("host routes: %v", err)
			}
			// The kernel's prefix routes too, as pasta copies them: with
			// -a in another subnet, they keep the gateway reachable. A
			// multipath route, with all its paths, if they all leave
			// through the template, as pasta copies it.
			for _, r := range host {
				if r.Type == unix.RTN_UNICAST && !slices.ContainsFunc(r.Nexthops, func(h rtnl.Nexthop) bool { return h.Index != index }) {
					// Of the flags, onlink alone means something to a
					// new route: the kernel reports the others (linkdown
					// and dead, where the template has no carrier) and
					// refuses a route that carries them.
					r.PrefSrc, r.Flags = netip.Addr{}, r.Flags&unix.RTNH_F_ONLINK
					routes = append(routes, r)
				}
			}
		}
		if f.gw.IsValid() && !slices.ContainsFunc(routes, func(r rtnl.Route) bool { return r.Dst.Bits() == 0 }) {
			// Without a default route to copy (none asked for, or the
			// host's has a path through another interface), one through
			// the gateway, if there is one: upstream's pasta leaves the
			// namespace of a host whose default route spreads over two
			// interfaces with none at all. On-link: the gateway may lie
			// outside a narrow prefix, as it does when the host's address
			// is a /32 (a link-local one is on-link anyway, and pasta
			// does not say it).
			def := rtnl.Route{Dst: netip.PrefixFrom(f.gw, 0).Masked(), Gateway: f.gw}
			if !f.gw.IsLinkLocalUnicast() {
				def.Flags = unix.RTNH_F_ONLINK
			}
			routes = append(routes, def)
		}
		p.Routes = append(p.Routes, routes...)
	}
	slices.SortStableFunc(p.Routes, func(a, b rtnl.Route) int {
		return boolInt(a.Gateway.IsValid() || len(a.Nexthops) > 0) - boolInt(b.Gateway.IsValid() || len(b.Nexthops) > 0)
	})
	return p, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// agentConn is the helper's end of the agent.
type agentConn struct {
	c      *helperClient
	cmd    *exec.Cmd
	splice int // the engine's end of the agent's splice socket, until handed over; -1
}

// startAgent starts the agent in t's namespaces and returns it with the
// tap it made there.
func startAgent(t nsTarget, plan nsPlan) (*agentConn, int, error) {
	args := []string{"--net=" + t.net}
	if t.user != "" && !sameNamespace(t.user, "/proc/self/ns/user") {
		args = append(args, "--user="+t.user, "--preserve-credentials")
	}
	if _, err := os.Stat(t.net); err != nil {
		return nil, -1, fmt.Errorf("network namespace: %v", err)
	}
	if _, err := os.Stat(t.user); t.user != "" && err != nil {
		return nil, -1, fmt.Errorf("user namespace: %v", err)
	}
	if nsenterPath == "" {
		return nil, -1, errors.New("joining the namespace: nsenter (from util-linux) not found in " + strings.Join(systemDirs, ", "))
	}
	self, err := os.Executable()
	if err != nil {
		return nil, -1, err
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, -1, err
	}
	child := os.NewFile(uintptr(pair[1]), "agent")
	defer child.Close()
	planFd, err := unix.MemfdCreate("gopasst-agent-plan", unix.MFD_CLOEXEC)
	if err != nil {
		unix.Close(pair[0])
		return nil, -1, fmt.Errorf("the agent's plan: %v", err)
	}
	planFile := os.NewFile(uintptr(planFd), "agent plan")
	defer planFile.Close()
	js, _ := json.Marshal(plan)
	if _, err := planFile.Write(js); err != nil {
		unix.Close(pair[0])
		return nil, -1, fmt.Errorf("the agent's plan: %v", err)
	}
	files, splice := []*os.File{child, planFile}, -1
	if plan.Splice != nil {
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			unix.Close(pair[0])
			return nil, -1, err
		}
		f := os.NewFile(uintptr(sp[1]), "agent splice")
		defer f.Close()
		files, splice = append(files, f), sp[0]
	}
	cmd := exec.Command(nsenterPath, append(args, "--", self)...)
	cmd.Env = append(os.Environ(), envPastaAgent+"=1")
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: unix.SIGKILL}
	if err := cmd.Start(); err != nil {
		unix.Close(pair[0])
		closeFd(splice)
		return nil, -1, fmt.Errorf("joining the namespace (nsenter, from util-linux): %v", err)
	}
	a := &agentConn{c: newHelperClient(pair[0]), cmd: cmd, splice: splice}
	var tap int
	if plan.NoTap {
		// No tap to take: the answer says whether the set-up worked.
		_, tap, err = a.c.call(helperRequest{Op: "tap"})
		closeFd(tap)
		tap = -1
	} else {
		tap, err = a.c.fdCall(helperRequest{Op: "tap"})
	}
	if err != nil {
		a.close()
		return nil, -1, fmt.Errorf("namespace set-up: %v", err)
	}
	return a, tap, nil
}

// systemDirs are where nsenter is looked for: never PATH, which the
// caller sets, as nsenter runs as root before the agent drops its
// capabilities.
var systemDirs = []string{"/usr/bin", "/bin", "/usr/sbin", "/sbin"}

// nsenterPath is nsenter's path in systemDirs, "" if none has it, found
// once when gopasst starts.
var nsenterPath = findNsenter()

func findNsenter() string {
	for _, d := range systemDirs {
		p := d + "/nsenter"
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// sameNamespace tells whether two namespace files are the same namespace
// (nsenter cannot join the user namespace it is in).
func sameNamespace(a, b string) bool {
	var sa, sb unix.Stat_t
	return unix.Stat(a, &sa) == nil && unix.Stat(b, &sb) == nil && sa.Ino == sb.Ino && sa.Dev == sb.Dev
}

func (a *agentConn) close() {
	unix.Close(a.c.fd)
	closeFd(a.splice)
	a.cmd.Wait()
}

// pastaHelper is the helper's part of pasta: it passes on to the agent
// the namespace binds that -T and -U ask for, hands the engine its end of
// the agent's splice socket (pasta_splice.go) once, gives the engine the
// namespace's /proc/net tables for -t/-u auto, and allows the engine to
// bind on the host, for auto, only a port that listens in the namespace.
// It checks each request against the command line: the agent keeps
// CAP_NET_BIND_SERVICE, and the engine may be compromised.
type pastaHelper struct {
	agent      *agentConn
	fwds       pastaForwards
	nsPorts    map[fwdPort]bool // the namespace ports -T and -U name
	tables     map[string]int   // the namespace's /proc/net tables, by name
	listen     listenCache      // the same, for auto
	hostListen listenCache      // the host's, for -T/-U auto
}

// newPastaHelper opens the namespace's and the host's tables that auto
// needs.
func newPastaHelper(a *agentConn, f pastaForwards) (*pastaHelper, error) {
	p := &pastaHelper{agent: a, fwds: f, tables: map[string]int{}, nsPorts: map[fwdPort]bool{}}
	for _, d := range []struct {
		proto    slirp.Proto
		auto, ns bool
		specs    []string
	}{{slirp.TCP, f.tcp.auto, f.tcpNS.auto, f.tcpNS.specs}, {slirp.UDP, f.udp.auto, f.udpNS.auto, f.udpNS.specs}} {
		for _, fw := range specForwards(d.specs) {
			p.nsPorts[fwdPort{d.proto, fw.HostPort}] = true
		}
		for _, name := range []string{string(d.proto), string(d.proto) + "6"} {
			if d.ns {
				fd, err := unix.Open("/proc/self/net/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					p.close()
					return nil, err
				}
				p.hostListen.tables = append(p.hostListen.tables, procTable{d.proto, fd})
			}
			if !d.auto {
				continue
			}
			fd, err := a.c.fdCall(helperRequest{Op: "proc", Table: name})
			if err != nil {
				p.close()
				return nil, fmt.Errorf("/proc/net/%s in the namespace: %v", name, err)
			}
			p.tables[name] = fd
			p.listen.tables = append(p.listen.tables, procTable{d.proto, fd})
		}
	}
	return p, nil
}

func (p *pastaHelper) close() {
	for _, t := range append(p.listen.tables, p.hostListen.tables...) {
		unix.Close(t.fd)
	}
}

// handle answers nsbind, nssplice and nsproc, for what the command line
// asked: a bind only on the namespace's loopback interface, of a port -T
// or -U names or, for auto, one that listens on the host; the splice
// socket once, unless --no-splice (the agent checks what the engine asks
// on it).
func (p *pastaHelper) handle(req *helperRequest) (int, error) {
	f := req.Fwd
	k := fwdPort{req.Proto, f.HostPort}
	switch {
	case req.Op == "nsbind" && f.Iface == "lo" && (!f.Addr.IsValid() || f.Addr.IsUnspecified()) && f.GuestPort == 0 &&
		(p.nsPorts[k] || p.hostListen.listens(k)):
		return p.agent.c.fdCall(helperRequest{Op: "bind", Proto: req.Proto, Fwd: f})
	case req.Op == "nssplice" && p.agent.splice >= 0:
		fd := p.agent.splice
		p.agent.splice = -1
		return fd, nil
	case req.Op == "nsproc":
		if fd, ok := p.tables[req.Table]; ok {
			return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		}
	}
	return -1, fmt.Errorf("%s %s %s %+v: not enabled by the command line", req.Op, req.Proto, req.Table, f)
}

// auto tells whether -t (TCP) or -u (UDP) is auto.
func (p *pastaHelper) auto(proto slirp.Proto) bool {
	return proto == slirp.TCP && p.fwds.tcp.auto || proto == slirp.UDP && p.fwds.udp.auto
}

// mayBind tells whether the engine may bind f on the host for -t or -u
// auto: its port listens in the namespace.
func (p *pastaHelper) mayBind(proto slirp.Proto, f portspec.Forward) bool {
	if p == nil || f.Addr.IsValid() || f.Iface != "" || f.HostPort != f.GuestPort || !p.auto(proto) {
		return false
	}
	return p.listen.listens(fwdPort{proto, f.HostPort})
}

// listenCache is what listens on one side, as its tables said at the
// last read. They are read again only for a port that did not listen
// then: a container that opens thousands of ports has the engine ask for
// each, and one read of tables that long takes tens of milliseconds. A
// port that listened may stay allowed: the engine could have used it
// then and kept it anyway. Nor are they read again within
// listenReread of the last read: a container that keeps thousands of
// ports open and churns a thousand more, each gone before the engine
// asks for it, had each ask read them all, a CPU's worth each second,
// while the engine waited for the answers.
type listenCache struct {
	tables []procTable
	scan   autoScan
	last   map[fwdPort]bool
	next   time.Time // when the tables may be read again
}

// listenReread is half of auto's period: a port that starts to listen
// is still seen at the engine's next scan, or soon after.
const listenReread = 500 * time.Millisecond

// listens tells whether k listens in c's tables.
func (c *listenCache) listens(k fwdPort) bool {
	if now := time.Now(); !c.last[k] && len(c.tables) > 0 && !now.Before(c.next) {
		c.last, c.next = c.scan.listening(c.tables), now.Add(listenReread)
	}
	return c.last[k]
}

// pastaAgent runs in the namespaces: it sets them up as planned, then
// serves the helper until it goes, and the engine's loopback path.
func pastaAgent() int {
	plan, err := readPlan(agentPlan)
	tap := -1
	var tables map[string]agentTable
	if t := os.Getenv(envAgentTap); t != "" && err == nil {
		// Set up, and confined by keepOnlyBindCap; the plan, read
		// again, is closed.
		unix.Close(agentPlan)
		tap, err = strconv.Atoi(t)
		unix.CloseOnExec(tap)
		tables = openAgentTables()
		if err == nil {
			err = installAgentSeccomp() // only the request loop's calls from here on
		}
		if err != nil {
			closeFd(tap)
			tap = -1
		} else if plan.Splice != nil {
			unix.CloseOnExec(agentSpliceSock)
			go serveSplice(agentSpliceSock, plan.Splice, spliceTables(plan.Splice, tables))
		}
	} else if err == nil {
		if tap, err = configureNS(&plan); err == nil {
			err = keepOnlyBindCap(tap) // returns only on failure
		}
	}
	return serveAgent(agentSock, tap, err, tables)
}

// readPlan reads the agent's plan from fd, from its start.
func readPlan(fd int) (nsPlan, error) {
	var plan nsPlan
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return plan, fmt.Errorf("the agent's plan: %v", err)
	}
	b := make([]byte, st.Size)
	for off := 0; off < len(b); {
		n, err := unix.Pread(fd, b[off:], int64(off))
		if n <= 0 {
			return plan, fmt.Errorf("the agent's plan: %v", cmp.Or(err, io.ErrUnexpectedEOF))
		}
		off += n
	}
	if err := json.Unmarshal(b, &plan); err != nil {
		return plan, fmt.Errorf("the agent's plan: %v", err)
	}
	return plan, nil
}

// spliceTables are the UDP tables, if the loopback path is -u auto, and
// with -t auto too the TCP ones: the auto scan then forwards a port
// listening for TCP for UDP as well, whose senders the agent must serve.
func spliceTables(r *spliceRules, tables map[string]agentTable) []procTable {
	if !r.AutoUDP {
		return nil
	}
	protos := []slirp.Proto{slirp.UDP}
	if r.AutoTCP {
		protos = append(protos, slirp.TCP)
	}
	var out []procTable
	for _, proto := range protos {
		for _, name := range []string{string(proto), string(proto) + "6"} {
			if t := tables[name]; t.err == nil {
				out = append(out, procTable{proto, t.fd})
			}
		}
	}
	return out
}

// agentTable is one of the namespace's /proc/net tables, opened before
// the filter (which allows no openat), or why it could not be.
type agentTable struct {
	fd  int
	err error
}

// openAgentTables opens the namespace's tables that auto reads; the
// calling thread must be in the namespace.
func openAgentTables() map[string]agentTable {
	tables := map[string]agentTable{}
	for _, name := range []string{"tcp", "tcp6", "udp", "udp6"} {
		fd, err := unix.Open("/proc/thread-self/net/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		tables[name] = agentTable{fd, err}
	}
	return tables
}

// serveAgent answers the helper on sock; the tap (none with
// --splice-only), or why there is none, goes to the first to ask; a table
// goes as a copy of its descriptor (readers read it from the start, with
// pread).
func serveAgent(sock, tap int, err error, tables map[string]agentTable) int {
	var host slirp.LocalHost
	var buf [4096]byte
	asked := false
	for {
		n, stray, rerr := recvMsg(sock, buf[:], 0)
		closeFds(stray)
		if (rerr != nil && rerr != errCtrunc) || n == 0 {
			return 0
		}
		var req helperRequest
		var r helperReply
		fd, ferr := -1, json.Unmarshal(buf[:n], &req)
		r.Seq = req.Seq
		table, isTable := tables[req.Table]
		switch {
		case ferr != nil:
		case req.Op == "tap":
			fd, ferr, tap = tap, err, -1
			if asked && ferr == nil {
				ferr = errors.New("the tap was handed over already")
			}
			asked = true
		case req.Op == "bind":
			fd, ferr = host.Bind(req.Proto, req.Fwd)
		case req.Op == "proc" && isTable && table.err != nil:
			ferr = table.err
		case req.Op == "proc" && isTable:
			fd, ferr = unix.FcntlInt(uintptr(table.fd), unix.F_DUPFD_CLOEXEC, 0)
		default:
			ferr = fmt.Errorf("unknown request %q", req.Op)
		}
		sendReply(sock, &r, fd, ferr)
	}
}

// configureNS brings up loopback and makes the tap, configured as
// planned, in the namespace the agent runs in.
func configureNS(p *nsPlan) (int, error) {
	if err := linkUp("lo", 0); err != nil {
		return -1, err
	}
	if p.NoTap {
		return -1, nil
	}
	tap, err := openTap(p.Ifname)
	if err != nil {
		return -1, err
	}
	err = configureTap(p)
	if err != nil {
		unix.Close(tap)
		return -1, err
	}
	return tap, nil
}

func configureTap(p *nsPlan) error {
	ifi, err := net.InterfaceByName(p.Ifname)
	if err != nil {
		return err
	}
	c, err := rtnl.Open()
	if err != nil {
		return err
	}
	defer c.Close()
	if p.MAC != "" {
		mac, _ := net.ParseMAC(p.MAC)
		if err := c.SetLink(ifi.Index, false, 0, mac); err != nil {
			return fmt.Errorf("%s: MAC %s: %v", p.Ifname, p.MAC, err)
		}
	}
	if !p.Config {
		return nil
	}
	// With IPv6, the link comes up with ARP, and so duplicate address
	// detection, off, and its link-local address is marked NODAD, as
	// pasta's: usable, not tentative, once the caller is told we are ready.
	// In IPv6 local mode, a default route alone says IPv6 is on.
	v6 := slices.ContainsFunc(p.Addrs, func(a rtnl.Addr) bool { return a.Prefix.Addr().Is6() }) ||
		slices.ContainsFunc(p.Routes, func(r rtnl.Route) bool { return r.Dst.Addr().Is6() })
	if v6 {
		if err := c.SetFlags(ifi.Index, unix.IFF_NOARP, unix.IFF_NOARP); err != nil {
			return fmt.Errorf("%s: NOARP: %v", p.Ifname, err)
		}
	}
	if err := c.SetLink(ifi.Index, true, p.MTU, nil); err != nil {
		return fmt.Errorf("%s: MTU %d, up: %v", p.Ifname, p.MTU, err)
	}
	if v6 {
		if err := linkLocalNoDAD(c, ifi.Index); err != nil {
			return fmt.Errorf("%s: link-local address: %v", p.Ifname, err)
		}
	}
	for _, a := range p.Addrs {
		a.Index = ifi.Index
		if err := c.AddAddr(a); err != nil && err != unix.EEXIST {
			return fmt.Errorf("%s: address %v: %v", p.Ifname, a.Prefix, err)
		}
	}
	for _, r := range p.Routes {
		r.Index = ifi.Index
		if err := c.AddRoute(r); err != nil && err != unix.EEXIST {
			return fmt.Errorf("%s: route to %v via %v: %v", p.Ifname, r.Dst, r.Gateway, err)
		}
	}
	return nil
}

// linkLocalNoDAD marks the link-local addresses of interface index
// NODAD, then turns ARP (neighbour solicitation) back on once the kernel
// has let them out of duplicate address detection. Its check runs from
// a work queue after the link comes up, and with ARP off ends at once;
// run after ARP is back on (a loaded machine), it checked for a second,
// the address tentative meanwhile, and a connect from it failed
// (EADDRNOTAVAIL) though we had said the namespace was ready.
func linkLocalNoDAD(c *rtnl.Conn, index int) error {
	for wait := time.Now().Add(dadWait); ; time.Sleep(time.Millisecond) {
		addrs, err := c.Addrs(unix.AF_INET6, index)
		if err != nil {
			return err
		}
		tentative := false
		for _, a := range addrs {
			if !a.Prefix.Addr().IsLinkLocalUnicast() {
				continue
			}
			tentative = tentative || a.Flags&unix.IFA_F_TENTATIVE != 0
			if a.Flags&unix.IFA_F_NODAD == 0 {
				a.Flags |= unix.IFA_F_NODAD
				if err := c.ReplaceAddr(a); err != nil {
					return err
				}
			}
		}
		if !tentative || time.Now().After(wait) {
			break
		}
	}
	return c.SetFlags(index, 0, unix.IFF_NOARP)
}

// dadWait bounds linkLocalNoDAD's wait for the kernel's work queue.
const dadWait = 2 * time.Second

// keepOnlyBindCap leaves the agent only the capability to bind the
// namespace's low ports, and no way to regain the rest: on one thread,
// it empties the bounding set but for that one and sets no_new_privs,
// then executes itself again, with the tap: the new image has that one
// thread's limits (root's capabilities on exec are the bounding set),
// and every thread the runtime makes inherits them, with cgo or not.
func keepOnlyBindCap(tap int) error {
	runtime.LockOSThread() // for good: the exec keeps only this thread
	lastCap, err := readInt("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		lastCap = 63
	}
	for c := 0; c <= lastCap; c++ {
		if c == unix.CAP_NET_BIND_SERVICE {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("dropping the capability bounding set: %w", err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("ambient capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if tap >= 0 {
		if _, err := unix.FcntlInt(uintptr(tap), unix.F_SETFD, 0); err != nil {
			return err
		}
	}
	env := append(os.Environ(), fmt.Sprintf("%s=%d", envAgentTap, tap))
	return syscall.Exec("/proc/self/exe", os.Args, env)
}
