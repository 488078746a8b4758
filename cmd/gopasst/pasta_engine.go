package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// The engine's part of pasta: the namespace's side of -T and -U, whose
// sockets the agent binds in the namespace and whose connections and
// datagrams go to the host's loopback, and "auto", which forwards what
// listens on the other side, checked each second from /proc/net.

// engineExtra finishes the engine's set-up before the sandbox.
type engineExtra func(eng *slirp.Engine, h *helperClient, logger *log.Logger) error

func (c *helperClient) nsBind(proto slirp.Proto, f portspec.Forward) (int, error) {
	return c.fdCall(helperRequest{Op: "nsbind", Proto: proto, Fwd: f})
}

func (c *helperClient) nsProc(name string) (int, error) {
	return c.fdCall(helperRequest{Op: "nsproc", Table: name})
}

// pastaState is what the engine's pasta part has open.
type pastaState struct {
	eng *slirp.Engine
	h   *helperClient
	// nsAny is the address -T and -U bind on the namespace's lo: none
	// (both families), or the wildcard of the one -4 or -6 leaves.
	nsAny netip.Addr

	mu      sync.Mutex
	nsSide  map[fwdPort]io.Closer // -T/-U listeners in the namespace, by port there
	autoFwd map[fwdPort]bool      // -t/-u auto forwards bound on the host
	autoNS  map[fwdPort]bool      // -T/-U auto listeners in the namespace
	hostFwd map[fwdPort]bool      // -t/-u forwards given as specs, bound on the host
}

type fwdPort struct {
	proto slirp.Proto
	port  uint16
}

// pastaEngine binds -T and -U in the namespace, starts auto, and gives
// the loopback path (sp, if not nil) its way to the agent.
func pastaEngine(o *pastaOptions, f pastaForwards, sp *splicer) engineExtra {
	return func(eng *slirp.Engine, h *helperClient, logger *log.Logger) error {
		if sp != nil {
			if err := sp.start(h); err != nil {
				return fmt.Errorf("the loopback path: %v", err)
			}
		}
		s := &pastaState{eng: eng, h: h, nsAny: nsWildcard(&o.NetOptions), nsSide: map[fwdPort]io.Closer{},
			autoFwd: map[fwdPort]bool{}, autoNS: map[fwdPort]bool{}, hostFwd: map[fwdPort]bool{}}
		for _, d := range []struct {
			proto        slirp.Proto
			toNS, fromNS []string
		}{{slirp.TCP, f.tcp.specs, f.tcpNS.specs}, {slirp.UDP, f.udp.specs, f.udpNS.specs}} {
			for _, fw := range specForwards(d.toNS) {
				s.hostFwd[fwdPort{d.proto, fw.HostPort}] = true
			}
			for _, fw := range specForwards(d.fromNS) {
				if err := s.bindNS(d.proto, fw, runNow); err != nil {
					return err
				}
			}
		}
		return s.startAuto(f)
	}
}

// specForwards is every forward of specs, which runPasta checked.
func specForwards(specs []string) []portspec.Forward {
	parsed, _ := portSpecs(specs)
	var out []portspec.Forward
	for _, sp := range parsed {
		out = append(out, sp.Forwards(nil)...)
	}
	return out
}

// nsWildcard is pastaState.nsAny for the family options.
func nsWildcard(o *NetOptions) netip.Addr {
	switch {
	case o.IPv4:
		return netip.IPv4Unspecified()
	case o.IPv6:
		return netip.IPv6Unspecified()
	}
	return netip.Addr{}
}

// runNow runs fn here: the engine's goroutine, before it runs.
func runNow(fn func()) { fn() }

// bindNS listens on fw.HostPort on the namespace's loopback interface,
// on any address of the families in use (s.nsAny), as pasta: 127.0.0.2
// is forwarded too. What comes goes to the host's loopback, port
// fw.GuestPort (slirp/splice.go); call runs a function on the engine's
// goroutine.
func (s *pastaState) bindNS(proto slirp.Proto, fw portspec.Forward, call func(func())) error {
	c, err := s.listenNS(proto, portspec.Forward{Addr: s.nsAny, Iface: "lo", HostPort: fw.HostPort}, fw.GuestPort, call)
	if err != nil {
		return errors.New("namespace " + string(proto) + " port " + strconv.Itoa(int(fw.HostPort)) + ": " + err.Error())
	}
	s.mu.Lock()
	s.nsSide[fwdPort{proto, fw.HostPort}] = c
	s.mu.Unlock()
	return nil
}

// listenNS has the helper bind f in the namespace, and the engine
// forwards what comes to the host's loopback port (slirp/splice.go).
func (s *pastaState) listenNS(proto slirp.Proto, f portspec.Forward, port uint16, call func(func())) (io.Closer, error) {
	fd, err := s.h.nsBind(proto, f)
	if err != nil {
		return nil, err
	}
	call(func() { err = s.eng.SpliceListen(proto, fd, port) })
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return spliceListener{fd, call, s.eng}, nil
}

// spliceListener is a -T or -U socket the engine watches.
type spliceListener struct {
	fd   int
	call func(func())
	eng  *slirp.Engine
}

func (l spliceListener) Close() error {
	l.call(func() { l.eng.SpliceUnlisten(l.fd) })
	return nil
}

// procTable is a /proc/net table auto reads.
type procTable struct {
	proto slirp.Proto
	fd    int
}

// startAuto scans once, then each second, for -t/-u auto (the namespace's
// listening sockets, bound on the host) and -T/-U auto (the host's, bound
// in the namespace).
func (s *pastaState) startAuto(f pastaForwards) error {
	var toHost, toNS []procTable // what listens in the namespace, and on the host
	for _, d := range []struct {
		proto      slirp.Proto
		auto, back bool
	}{{slirp.TCP, f.tcp.auto, f.tcpNS.auto}, {slirp.UDP, f.udp.auto, f.udpNS.auto}} {
		for _, name := range []string{string(d.proto), string(d.proto) + "6"} {
			if d.auto {
				fd, err := s.h.nsProc(name)
				if err != nil {
					return err
				}
				toHost = append(toHost, procTable{d.proto, fd})
			}
			if d.back {
				fd, err := unix.Open("/proc/self/net/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					return err
				}
				toNS = append(toNS, procTable{d.proto, fd})
			}
		}
	}
	if len(toHost)+len(toNS) == 0 {
		return nil
	}
	a := &autoScan{retry: [2]map[fwdPort]retry{{}, {}}}
	// The first scan is the engine's own, before it runs: its forwards are
	// bound when the caller is told we are ready.
	s.scan(a, toHost, toNS, func(fn func()) { fn() })
	go func() {
		for {
			time.Sleep(time.Second)
			s.scan(a, toHost, toNS, s.eng.Call)
		}
	}()
	return nil
}

// autoScan is what a scan keeps for the next: its scratch space, and
// when to try again the binds that failed, on the host (-t/-u auto) and
// in the namespace (-T/-U auto).
type autoScan struct {
	buf   []byte
	n     int // scans so far
	retry [2]map[fwdPort]retry
}

const (
	bindHost = iota
	bindNS
)

// retry is when a bind that failed is tried again. A port someone else
// holds tends to stay held, and a container that holds a thousand of
// them would otherwise cost a thousand binds each second: the wait
// doubles from one scan to 32.
type retry struct{ at, wait int }

func (a *autoScan) due(side int, p fwdPort) bool {
	r, ok := a.retry[side][p]
	return !ok || a.n >= r.at
}

// bound notes how a bind of p went.
func (a *autoScan) bound(side int, p fwdPort, err error) {
	if err == nil {
		delete(a.retry[side], p)
		return
	}
	r := a.retry[side][p]
	r.wait = min(max(2*r.wait, 1), 32)
	r.at = a.n + r.wait
	a.retry[side][p] = r
}

// forget drops the retries of ports that no longer listen.
func (a *autoScan) forget(side int, listening map[fwdPort]bool) {
	for p := range a.retry[side] {
		if !listening[p] {
			delete(a.retry[side], p)
		}
	}
}

// scan binds what newly listens on either side and releases what no
// longer does; call runs a function on the engine's goroutine.
func (s *pastaState) scan(a *autoScan, toHost, toNS []procTable, call func(func())) {
	a.n++
	nsListen := a.listening(toHost)
	a.forget(bindHost, nsListen)
	s.mu.Lock()
	for p := range s.nsSide {
		delete(nsListen, p) // our own -T/-U sockets
	}
	var add, del []fwdPort
	for p := range nsListen {
		if !s.autoFwd[p] && a.due(bindHost, p) {
			add = append(add, p)
		}
	}
	for p := range s.autoFwd {
		if !nsListen[p] {
			del = append(del, p)
		}
	}
	s.mu.Unlock()
	call(func() {
		for _, p := range add {
			fw := []portspec.Forward{{HostPort: p.port, GuestPort: p.port}}
			err := s.eng.AddForwards(p.proto, fw, false)
			if a.bound(bindHost, p, err); err == nil {
				s.mu.Lock()
				s.autoFwd[p] = true
				s.mu.Unlock()
			}
		}
		for _, p := range del {
			s.eng.RemoveForwards(p.proto, []portspec.Forward{{HostPort: p.port, GuestPort: p.port}})
			s.mu.Lock()
			delete(s.autoFwd, p)
			s.mu.Unlock()
		}
	})
	if len(toNS) == 0 {
		return
	}
	hostListen := a.listening(toNS)
	a.forget(bindNS, hostListen)
	s.mu.Lock()
	for p := range s.autoFwd {
		delete(hostListen, p) // our own -t/-u auto sockets
	}
	for p := range s.hostFwd {
		delete(hostListen, p) // and the others: -T auto never loops back
	}
	var bind []fwdPort
	for p := range hostListen {
		if s.nsSide[p] == nil && a.due(bindNS, p) {
			bind = append(bind, p)
		}
	}
	for p := range s.autoNS {
		if !hostListen[p] {
			s.nsSide[p].Close()
			delete(s.nsSide, p)
			delete(s.autoNS, p)
		}
	}
	s.mu.Unlock()
	for _, p := range bind {
		err := s.bindNS(p.proto, portspec.Forward{HostPort: p.port, GuestPort: p.port}, call)
		if a.bound(bindNS, p, err); err == nil {
			s.mu.Lock()
			s.autoNS[p] = true
			s.mu.Unlock()
		}
	}
}

// listening reads tables into the set of listening ports. With UDP's
// tables among them (UDP auto), a listening TCP port counts for UDP too,
// as pasta forwards it: a TCP control port often sets up transfers on
// the same UDP port (iperf3).
func (a *autoScan) listening(tables []procTable) map[fwdPort]bool {
	ports := map[fwdPort]bool{}
	udp := slices.ContainsFunc(tables, func(t procTable) bool { return t.proto == slirp.UDP })
	for _, t := range tables {
		parseProcNet(readTable(t.fd, &a.buf), t.proto == slirp.UDP, func(port uint16) {
			ports[fwdPort{t.proto, port}] = true
			if udp && t.proto == slirp.TCP {
				ports[fwdPort{slirp.UDP, port}] = true
			}
		})
	}
	return ports
}

// readTable reads a /proc/net table whole from its start, into *buf,
// grown as needed (the kernel makes it afresh on each read).
func readTable(fd int, buf *[]byte) []byte {
	if len(*buf) == 0 {
		*buf = make([]byte, 64<<10)
	}
	n := 0
	for {
		if n == len(*buf) {
			*buf = append(*buf, make([]byte, len(*buf))...)
		}
		m, err := unix.Pread(fd, (*buf)[n:], int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil || m <= 0 {
			return (*buf)[:n]
		}
		n += m
	}
}

// parseProcNet calls fn with the local port of each listening socket in
// a /proc/net/{tcp,udp}[6] table: TCP in state LISTEN, UDP unconnected.
// Lines it cannot read are skipped.
func parseProcNet(b []byte, udp bool, fn func(port uint16)) {
	want := []byte("0A") // TCP_LISTEN
	if udp {
		want = []byte("07") // TCP_CLOSE: a UDP socket with no peer
	}
	for line := range bytes.Lines(b) {
		f := bytes.Fields(line)
		if len(f) < 4 || !bytes.Equal(f[3], want) {
			continue
		}
		_, local, ok1 := bytes.Cut(f[1], []byte(":"))
		remote, rport, ok2 := bytes.Cut(f[2], []byte(":"))
		if !ok1 || !ok2 || (udp && len(bytes.Trim(remote, "0"))+len(bytes.Trim(rport, "0")) > 0) {
			continue
		}
		p, err := strconv.ParseUint(string(local), 16, 16)
		if err == nil && p != 0 {
			fn(uint16(p))
		}
	}
}
