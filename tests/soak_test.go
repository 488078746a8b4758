package tests

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/tests/internal/soak"
)

// The soak test: a realistic mix of a guest's traffic for GOPASST_SOAK
// (a Go duration), then a look at everything that must
// not grow: the engine's descriptors (by kind: TCP, UDP and ICMP sockets,
// pipes, the rest), the helper's and pasta's agent's, RSS, threads, CPU.

const (
	soakGuestPort = 8300  // the guest's server, behind -t and -u
	soakFwd       = 18300 // -t and -u to it
	soakCtlFwd    = 18302 // added and removed through the control socket
	soakOutFwd    = 18320 // pasta's -T to the host's server
	soakUDPIdle   = 3 * time.Minute
	soakMTU       = "1500" // so that UDP, DNS and echo go in fragments
)

// soakDuration is GOPASST_SOAK; unset, the test skips: it still finds
// an upload that stalls for good after loss recovery (about one in 400
// transfers), which is not fixed yet (docs/testing.md). The upload's
// segments are lost in the guest's tap (TX drops: its ring full while the
// engine is busy); the guest's timeout, backed off through the recovery,
// stays so while its ACKs cover only retransmitted data: without
// timestamps (passt offers none either) those give no round-trip sample
// (Karn), and each later loss costs 30 s and more.
func soakDuration(t *testing.T) time.Duration {
	s := os.Getenv("GOPASST_SOAK")
	if s == "" {
		t.Skip("GOPASST_SOAK=DURATION (e.g. 60s, 10m) runs the soak test")
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("GOPASST_SOAK=%q: %v", s, err)
	}
	return d
}

// nsEnv runs the workload's ops in ns.
func nsEnv(ns *Netns) soak.Env {
	return soak.Env{
		Dial: ns.Dial,
		ListenPacket: func() (c net.PacketConn, err error) {
			if e := ns.do(func() { c, err = net.ListenPacket("udp", ":0") }); e != nil {
				return nil, e
			}
			return c, err
		},
		Command: ns.Cmd,
	}
}

// soakRig is one gopasst under the workload: passt's, with a netns
// guest or a QEMU guest on its vhost-user socket, or pasta's, with the
// namespace it serves.
type soakRig struct {
	host   *Netns
	guest  *Netns // the guest's namespace, nil for a QEMU guest
	helper int    // gopasst's unsandboxed process
	engine int    // its sandboxed engine
	agent  int    // pasta's agent in the namespace, 0 for passt
	ctl    string // the control socket, "" without
	pasta  bool
	// guestDo runs one of the workload's ops (soak.Env.Run) in the
	// guest, and guestDiag tells where its TCP and link stand.
	guestDo   func(op string) (string, error)
	guestDiag func() string
	// bulk is the size of a long transfer; inbound ones are a quarter.
	bulk int64
	// reconnect, if set, cuts the guest's link and waits until it is
	// back; the workload's exchanges cut by it are not failures.
	reconnect func(t *testing.T)
	cutMu     sync.Mutex
	cuts      [][2]time.Time
	// Where the guest reaches the host's servers: their ports on host
	// loopback, through the gateways.
	tcp4, tcp6, udp4, udp6 int
	// made counts the flows the workload opened that may linger after
	// it, until their protocol's idle timeout: UDP and ICMP.
	madeUDP, madeICMP atomic.Int64
	pingLost          atomic.Int64 // pings that lost a reply
}

// useGuestNetns makes ns the guest where the workload runs.
func (r *soakRig) useGuestNetns(ns *Netns) {
	r.guest = ns
	r.guestDo = nsEnv(ns).Run
	r.guestDiag = func() string {
		// Where each end's TCP stands tells who stalled it. A tap's TX
		// drops are frames its ring had no room for, before the engine
		// could read them.
		guest, _ := ns.Cmd("ss", "-tinoem").CombinedOutput()
		link, _ := ns.Cmd("ip", "-s", "link").CombinedOutput()
		return fmt.Sprintf("the guest's sockets:\n%s\nthe guest's links:\n%s", guest, link)
	}
}

// duringCut tells whether an exchange from from to to overlapped a cut
// of the guest's link, or the few seconds after it, while the guest's
// IPv6 addresses are tentative again; and if so, how long after the
// link was back the exchange began (less than 0: before).
func (r *soakRig) duringCut(from, to time.Time) (bool, time.Duration) {
	r.cutMu.Lock()
	defer r.cutMu.Unlock()
	cut, after := false, time.Duration(0)
	for _, c := range r.cuts {
		if from.Before(c[1].Add(5*time.Second)) && to.After(c[0]) {
			cut, after = true, from.Sub(c[1])
		}
	}
	return cut, after
}

// soakSample is what the rig's processes hold at one moment.
type soakSample struct {
	at                           time.Duration
	fds                          map[string]int // the engine's, by kind (fdKinds)
	helperFds, agentFds, threads int
	rss                          int // resident, but for the guest's memory it maps
	guestMaps                    int // mappings of a vhost-user guest's memory
	maps                         int // all its mappings
	cpu                          float64
}

// fdKinds sorts a process's descriptors: its sockets by protocol, as
// the tables of its network namespace and of those of nsPids list them,
// pipes, and the rest (epoll, eventfds, timers, the link, netlink).
func fdKinds(pid int, nsPids ...int) map[string]int {
	proto := map[string]string{}
	for _, p := range append([]int{pid}, nsPids...) {
		for _, tab := range []string{"tcp", "tcp6", "udp", "udp6", "icmp", "icmp6"} {
			data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", p, tab))
			for _, l := range strings.Split(string(data), "\n")[1:] {
				if f := strings.Fields(l); len(f) > 9 {
					proto[f[9]] = strings.TrimSuffix(tab, "6")
				}
			}
		}
	}
	kinds := map[string]int{"tcp": 0, "udp": 0, "icmp": 0, "pipe": 0, "other": 0}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		switch {
		case strings.HasPrefix(link, "socket:["):
			if p := proto[strings.Trim(link[len("socket:"):], "[]")]; p != "" {
				kinds[p]++
			} else {
				kinds["other"]++
			}
		case strings.HasPrefix(link, "pipe:"):
			kinds["pipe"]++
		default:
			kinds["other"]++
		}
	}
	return kinds
}

func (r *soakRig) sample(t *testing.T, start time.Time) soakSample {
	st := procStatus(t, strconv.Itoa(r.engine))
	threads, _ := strconv.Atoi(st["Threads"])
	shmem, _ := strconv.Atoi(strings.TrimSuffix(st["RssShmem"], " kB"))
	// pasta's engine holds sockets of the namespace too, where its agent is.
	s := soakSample{at: time.Since(start).Round(time.Second), fds: fdKinds(r.engine, r.agent), threads: threads,
		rss: rss(t, r.engine) - shmem<<10, cpu: procCPU([]int{r.engine}), helperFds: countFds(t, r.helper)}
	maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", r.engine))
	s.maps = bytes.Count(maps, []byte("\n"))
	s.guestMaps = bytes.Count(maps, []byte("/memfd:"))
	if r.agent != 0 {
		s.agentFds = countFds(t, r.agent)
	}
	return s
}

func (s soakSample) String() string {
	return fmt.Sprintf("%6v  tcp %4d udp %4d icmp %3d pipe %3d other %2d  helper %2d agent %2d  threads %2d  RSS %5.1f MiB  maps %3d (guest %d)  CPU %6.1f s",
		s.at, s.fds["tcp"], s.fds["udp"], s.fds["icmp"], s.fds["pipe"], s.fds["other"], s.helperFds, s.agentFds, s.threads,
		float64(s.rss)/(1<<20), s.maps, s.guestMaps, s.cpu)
}

// soakWorker is one kind of traffic, run in a loop by its goroutines.
type soakWorker struct {
	name  string
	procs int
	pause time.Duration // between iterations
	run   func(i int) error
}

// TestSoak runs the workload against gopasst as passt, behind a netns
// guest, and as pasta, for GOPASST_SOAK each.
func TestSoak(t *testing.T) {
	d := soakDuration(t)
	t.Run("passt", func(t *testing.T) {
		w := newWorld(t, WorldOpts{Args: []string{"--mtu", soakMTU, "--control", "{dir}/ctl",
			"-t", fmt.Sprintf("%d:%d", soakFwd, soakGuestPort), "-u", fmt.Sprintf("%d:%d", soakFwd+1, soakGuestPort+1)}})
		w.waitIPv6(t)
		r := &soakRig{host: w.Host, helper: w.Proc.Process.Pid, engine: w.ServerPid(t), ctl: filepath.Join(w.Dir, "ctl")}
		r.useGuestNetns(w.Guest)
		r.soak(t, d)
	})
	t.Run("pasta", func(t *testing.T) {
		needRoot(t)
		if pastaExe() != gopasstBin {
			t.Skip("watches gopasst's engine")
		}
		h := newHost(t, WorldOpts{})
		ns, pid, _ := pidNetns(t, h)
		out := h.Listen(t, "tcp", "127.0.0.1:0")
		soak.Serve(out)
		argv := []string{"--config-net", "-m", soakMTU,
			"-t", fmt.Sprintf("%d:%d", soakFwd, soakGuestPort), "-u", fmt.Sprintf("%d:%d", soakFwd+1, soakGuestPort+1),
			"-T", fmt.Sprintf("%d:%s", soakOutFwd, port(out.Addr())), "-U", "none", pid}
		if out, err := h.Cmd(pastaLink(t), argv...).CombinedOutput(); err != nil {
			t.Fatalf("pasta: %v: %s", err, out)
		}
		r := &soakRig{host: h, pasta: true, engine: pastaEngineOf(t, pid)}
		r.useGuestNetns(ns)
		for _, p := range mentioning(pid, gopasstBin) {
			if p != r.engine {
				r.helper = p
			}
		}
		r.agent, _ = strconv.Atoi(pastaAgent(t, pid))
		waitFor(t, "the namespace's IPv6 address", func() bool {
			return strings.Contains(ns.Run(t, "ip", "-6", "addr", "show", "scope", "global"), host6Addr)
		})
		r.soak(t, d)
	})
}

// soak starts the servers, runs the workload for d while sampling, and
// checks what it left behind.
func (r *soakRig) soak(t *testing.T, d time.Duration) {
	serve := func(ns *Netns, addr string) int {
		l := ns.Listen(t, "tcp", addr)
		soak.Serve(l)
		return int(l.Addr().(*net.TCPAddr).Port)
	}
	echoUDP := func(ns *Netns, addr string) int {
		c := ns.ListenPacket(t, "udp", addr)
		soak.Echo(c)
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	r.tcp4, r.tcp6 = serve(r.host, "127.0.0.1:0"), serve(r.host, "[::1]:0")
	r.udp4, r.udp6 = echoUDP(r.host, "127.0.0.1:0"), echoUDP(r.host, "[::1]:0")
	if r.guest != nil { // a QEMU guest's agent serves these
		serve(r.guest, fmt.Sprintf(":%d", soakGuestPort))
		echoUDP(r.guest, fmt.Sprintf(":%d", soakGuestPort+1))
	}
	dns := r.host.ListenPacket(t, "udp", net.JoinHostPort(hostDNS, "53"))
	servePackets(dns, func(q []byte) []byte { return dnsAnswer(q, soak.DNSName, soak.DNSAddr) })
	if r.bulk == 0 {
		r.bulk = 32 << 20
	}

	workers := r.workers()
	start := time.Now()
	base := r.sample(t, start)
	t.Logf("start: %v", base)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string][3]int{}  // name: ok, failed, cut by a reconnection
	lateCut := map[string]string{} // name: the latest begun of those cut
	lateAfter := map[string]time.Duration{}
	diagnosed := 0 // failures begun after a cut, with both ends' sockets logged
	var failures []string
	for _, wk := range workers {
		for p := range wk.procs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := p; ; i += wk.procs {
					select {
					case <-stop:
						return
					default:
					}
					began := time.Now()
					err := wk.run(i)
					cut, after := r.duringCut(began, time.Now())
					diagnose := false
					mu.Lock()
					c := counts[wk.name]
					if err != nil && cut {
						c[2]++
						if l, ok := lateAfter[wk.name]; !ok || after > l {
							lateAfter[wk.name], lateCut[wk.name] = after, err.Error()
						}
						if diagnose = after > 0 && diagnosed < 5; diagnose {
							diagnosed++
						}
					} else if err != nil {
						c[1]++
						if len(failures) < 20 {
							failures = append(failures, fmt.Sprintf("%s #%d at %v: %v", wk.name, i, time.Since(start).Round(time.Second), err))
						}
					} else {
						c[0]++
					}
					counts[wk.name] = c
					mu.Unlock()
					if diagnose {
						host, _ := r.host.Cmd("ss", "-tnoie").CombinedOutput()
						t.Logf("%s #%d, begun %v after the link was back, at %v: %v\n%s\nthe host's sockets:\n%s", wk.name, i,
							after.Round(time.Millisecond), time.Since(start).Round(time.Second), err, r.guestDiag(), host)
					}
					time.Sleep(wk.pause)
				}
			}()
		}
	}
	if r.reconnect != nil {
		// A few times through the run, every four minutes or so, the
		// guest's link is cut: the engine must let go of all it held
		// for it. In between, UDP and ICMP flows live to their idle
		// timeout, which a cut cuts short.
		n := max(3, int(d/(4*time.Minute)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 1; k <= n; k++ {
				select {
				case <-stop:
					return
				case <-time.After(time.Until(start.Add(d * time.Duration(k) / time.Duration(n+1)))):
				}
				cut := [2]time.Time{time.Now(), time.Now().Add(time.Hour)}
				r.cutMu.Lock()
				r.cuts = append(r.cuts, cut)
				r.cutMu.Unlock()
				r.reconnect(t)
				r.cutMu.Lock()
				r.cuts[len(r.cuts)-1][1] = time.Now()
				r.cutMu.Unlock()
				t.Logf("%6v  the guest's link cut and back in %v", time.Since(start).Round(time.Second), time.Since(cut[0]).Round(time.Millisecond))
			}
		}()
	}
	every := max(d/40, 2*time.Second)
	samples := []soakSample{base}
	for deadline := start.Add(d); time.Now().Before(deadline); {
		time.Sleep(min(every, time.Until(deadline)))
		s := r.sample(t, start)
		samples = append(samples, s)
		t.Logf("%v", s)
	}
	close(stop)
	wg.Wait()
	for _, wk := range workers {
		c := counts[wk.name]
		t.Logf("%-28s %6d done, %d failed", wk.name, c[0], c[1])
		if r.reconnect != nil {
			t.Logf("%28s %d cut by a reconnection", "", c[2])
		}
		if c[2] > 0 && lateAfter[wk.name] > 0 {
			t.Logf("%28s the latest cut began %v after the link was back: %.200s", "", lateAfter[wk.name].Round(time.Millisecond), lateCut[wk.name])
		} else if c[2] > 0 {
			t.Logf("%28s each began before the link was back", "")
		}
		if c[0] == 0 {
			t.Errorf("%s: none done", wk.name)
		}
	}
	t.Logf("pings that lost a reply: %d", r.pingLost.Load())
	for _, f := range failures {
		t.Error(f)
	}
	r.growth(t, samples)
	r.settle(t, base, samples, start)
}

// workers is the workload, from the guest unless named inbound.
func (r *soakRig) workers() []soakWorker {
	host := nsEnv(r.host)
	ok := func(_ string, err error) error { return err }
	ws := []soakWorker{
		{"short TCP, every ending", 8, 5 * time.Millisecond, func(i int) error {
			addr := net.JoinHostPort(hostGW, strconv.Itoa(r.tcp4))
			if i%2 == 1 {
				addr = net.JoinHostPort(host6GW, strconv.Itoa(r.tcp6))
			}
			return ok(r.guestDo(fmt.Sprintf("req %s %d %d", addr, i/2%5, byte(i))))
		}},
		{"long transfers, both ways", 2, time.Second, func(i int) error {
			addr := net.JoinHostPort(hostGW, strconv.Itoa(r.tcp4))
			if i/2%2 == 1 {
				addr = net.JoinHostPort(host6GW, strconv.Itoa(r.tcp6))
			}
			dir := map[bool]string{true: "up", false: "down"}[i%2 == 0]
			if _, err := r.guestDo(fmt.Sprintf("xfer %s %s %d %d", addr, dir, byte(i), r.bulk)); err != nil {
				// Where each end's TCP stands tells who stalled it.
				host, _ := r.host.Cmd("ss", "-tinoem").CombinedOutput()
				return fmt.Errorf("%v\n%s\nthe host's sockets:\n%s", err, r.guestDiag(), host)
			}
			return nil
		}},
		{"DNS through the stand-ins", 1, 100 * time.Millisecond, func(i int) error {
			dns := hostGW
			if i%2 == 1 {
				dns = host6GW
			}
			r.madeUDP.Add(1)
			return ok(r.guestDo(fmt.Sprintf("dns %s %d", net.JoinHostPort(dns, "53"), i&0xffff)))
		}},
		{"UDP echo, fragments both ways", 2, 50 * time.Millisecond, func(i int) error {
			addr := net.JoinHostPort(hostGW, strconv.Itoa(r.udp4))
			if i%2 == 1 {
				addr = net.JoinHostPort(host6GW, strconv.Itoa(r.udp6))
			}
			r.madeUDP.Add(1)
			return ok(r.guestDo(fmt.Sprintf("udp %s %d %d", addr, []int{1, 512, 1472, 4000, 9000, 30000}[i/2%6], byte(i))))
		}},
		// An echo reply may be dropped as any frame is where the link or
		// the guest's backlog is full: one of three must come back.
		{"ping, IPv4 and IPv6", 1, 200 * time.Millisecond, func(i int) error {
			op := "exec busybox ping -c 3 -W 5 -s " + []string{"56", "4000", "20000"}[i/2%3]
			if i%2 == 1 {
				op += " -6 " + host6GW
			} else {
				op += " " + hostGW
			}
			r.madeICMP.Add(1)
			out, err := r.guestDo(op)
			if strings.Contains(out, " 0 packets received") || !strings.Contains(out, "packets received") {
				return fmt.Errorf("%s: %v: %s", op, err, out)
			}
			if !strings.Contains(out, "3 packets received") {
				r.pingLost.Add(1)
			}
			return nil
		}},
		{"inbound TCP through -t", 2, 10 * time.Millisecond, func(i int) error {
			addr := []string{"127.0.0.1", "[::1]", hostAddr}[i%3] + ":" + strconv.Itoa(soakFwd)
			if i%16 == 0 {
				dir := map[bool]string{true: "up", false: "down"}[i%32 == 0]
				return ok(host.Run(fmt.Sprintf("xfer %s %s %d %d", addr, dir, byte(i), r.bulk/4)))
			}
			return ok(host.Run(fmt.Sprintf("req %s %d %d", addr, i/3%5, byte(i))))
		}},
		{"inbound UDP through -u", 1, 50 * time.Millisecond, func(i int) error {
			addr := []string{"127.0.0.1", "[::1]"}[i/4%2] + ":" + strconv.Itoa(soakFwd+1)
			r.madeUDP.Add(1)
			return ok(host.Run(fmt.Sprintf("udp %s %d %d", addr, []int{1, 1000, 3000, 20000}[i%4], byte(i))))
		}},
	}
	if r.ctl != "" {
		ws = append(ws, soakWorker{"forward added, used, removed", 1, time.Second, func(i int) error {
			spec := fmt.Sprintf("%d:%d", soakCtlFwd, soakGuestPort)
			if out, err := exec.Command(gopasstBin, "ctl", r.ctl, "add", "-t", spec).CombinedOutput(); err != nil {
				return fmt.Errorf("ctl add: %v: %s", err, out)
			}
			_, err := host.Run(fmt.Sprintf("req 127.0.0.1:%d 0 %d", soakCtlFwd, byte(i)))
			if out, e := exec.Command(gopasstBin, "ctl", r.ctl, "remove", "-t", spec).CombinedOutput(); e != nil {
				return fmt.Errorf("ctl remove: %v: %s", e, out)
			}
			if err != nil {
				return err
			}
			if _, err := r.host.Dial("tcp", "127.0.0.1:"+strconv.Itoa(soakCtlFwd), 5*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
				return fmt.Errorf("after ctl remove: %v, want refused", err)
			}
			return nil
		}})
	}
	if r.pasta {
		ws = append(ws, soakWorker{"outbound through -T (splice)", 2, 10 * time.Millisecond, func(i int) error {
			addr := "127.0.0.1:" + strconv.Itoa(soakOutFwd)
			if i%16 == 0 {
				dir := map[bool]string{true: "up", false: "down"}[i%32 == 0]
				return ok(r.guestDo(fmt.Sprintf("xfer %s %s %d %d", addr, dir, byte(i), r.bulk/4)))
			}
			return ok(r.guestDo(fmt.Sprintf("req %s %d %d", addr, i%5, byte(i))))
		}})
	}
	return ws
}

// growth fails on what kept growing through the run: the last third's
// least sample above the middle third's greatest by more than a
// generous bound. UDP and ICMP flows are left out: they live their idle
// timeout after their last datagram, so they grow for that long.
func (r *soakRig) growth(t *testing.T, s []soakSample) {
	if len(s) < 9 {
		return
	}
	mid, last := s[len(s)/3:2*len(s)/3], s[2*len(s)/3:]
	for _, m := range []struct {
		what  string
		bound int
		get   func(soakSample) int
	}{
		{"TCP sockets", 256, func(s soakSample) int { return s.fds["tcp"] }},
		{"pipes", 64, func(s soakSample) int { return s.fds["pipe"] }},
		{"other descriptors", 8, func(s soakSample) int { return s.fds["other"] }},
		{"the helper's descriptors", 8, func(s soakSample) int { return s.helperFds }},
		{"the agent's descriptors", 8, func(s soakSample) int { return s.agentFds }},
		{"threads", 4, func(s soakSample) int { return s.threads }},
		{"mappings", 32, func(s soakSample) int { return s.maps }},
		{"RSS", 32 << 20, func(s soakSample) int { return s.rss }},
	} {
		hi := slices.Max(mapSamples(mid, m.get))
		lo := slices.Min(mapSamples(last, m.get))
		if lo > hi+m.bound {
			t.Errorf("%s grew through the run: at least %d in its last third, at most %d in the one before", m.what, lo, hi)
		}
	}
}

func mapSamples(s []soakSample, get func(soakSample) int) []int {
	var v []int
	for _, x := range s {
		v = append(v, get(x))
	}
	return v
}

// settle waits for what must go once the workload stops, and checks
// what may linger; then that the engine idles.
func (r *soakRig) settle(t *testing.T, base soakSample, samples []soakSample, start time.Time) {
	var end soakSample
	back := func() bool {
		end = r.sample(t, start)
		return end.fds["tcp"] <= base.fds["tcp"] && end.fds["pipe"] <= base.fds["pipe"] &&
			end.fds["other"] <= base.fds["other"] && end.helperFds <= base.helperFds && end.agentFds <= base.agentFds &&
			end.guestMaps <= base.guestMaps
	}
	// A flow whose FIN the guest never acknowledges lives a minute.
	if !pollUntil(2*time.Minute, back) {
		t.Errorf("after the workload, the engine's descriptors, or its mappings of the guest's memory, did not go back to their start:\nstart %v\nnow   %v", base, end)
	}
	// UDP and ICMP flows live their idle timeout: wait for it if the run
	// was long, else count them against what the workload opened.
	if soakDuration(t) >= soakUDPIdle {
		if !pollUntil(soakUDPIdle+30*time.Second, func() bool {
			end = r.sample(t, start)
			return end.fds["udp"] <= base.fds["udp"] && end.fds["icmp"] <= base.fds["icmp"]
		}) {
			t.Errorf("UDP and ICMP flows outlived their idle timeout:\nstart %v\nnow   %v", base, end)
		}
	} else if udp, icmp := int64(end.fds["udp"]-base.fds["udp"]), int64(end.fds["icmp"]-base.fds["icmp"]); udp > r.madeUDP.Load() || icmp > r.madeICMP.Load() {
		t.Errorf("%d UDP and %d ICMP sockets left, for %d and %d flows", udp, icmp, r.madeUDP.Load(), r.madeICMP.Load())
	}
	idleEngine(t, r.engine, "after the soak")
	end = r.sample(t, start)
	if end.threads > base.threads+2 {
		t.Errorf("the engine has %d threads, %d at start", end.threads, base.threads)
	}
	if end.rss > base.rss+32<<20 {
		t.Errorf("the engine's RSS is %d MiB, %d MiB at start", end.rss>>20, base.rss>>20)
	}
	peak := base
	peak.fds = maps.Clone(base.fds)
	for _, s := range samples {
		for k, v := range s.fds {
			peak.fds[k] = max(peak.fds[k], v)
		}
		peak.threads, peak.rss = max(peak.threads, s.threads), max(peak.rss, s.rss)
		peak.maps, peak.guestMaps = max(peak.maps, s.maps), max(peak.guestMaps, s.guestMaps)
		peak.helperFds, peak.agentFds = max(peak.helperFds, s.helperFds), max(peak.agentFds, s.agentFds)
	}
	t.Logf("start %v\npeak  %v\nend   %v", base, peak, end)
}
