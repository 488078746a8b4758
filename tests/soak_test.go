package tests

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
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

// soakServe serves the workload's TCP protocol on l: a line "get SEED N"
// is answered with newStream(SEED, N) and a close; "put N" reads N bytes
// and answers their SHA-256; "echo" echoes until the client's FIN;
// "rst" resets.
func soakServe(l net.Listener) {
	acceptLoop(l, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		var seed byte
		var n int64
		switch f := strings.Fields(line); {
		case len(f) == 3 && f[0] == "get":
			fmt.Sscan(f[1], &seed)
			fmt.Sscan(f[2], &n)
			io.Copy(c, newStream(seed, n))
		case len(f) == 2 && f[0] == "put":
			fmt.Sscan(f[1], &n)
			sum, got, _ := hashCopy(io.LimitReader(r, n))
			fmt.Fprintf(c, "%x %d\n", sum, got)
		case len(f) == 1 && f[0] == "echo":
			io.Copy(c, r)
		case len(f) == 1 && f[0] == "rst":
			c.(*net.TCPConn).SetLinger(0)
		}
	})
}

// soakRig is one gopasst under the workload: passt's, with a netns
// guest, or pasta's, with the namespace it serves.
type soakRig struct {
	host, guest *Netns
	helper      int    // gopasst's unsandboxed process
	engine      int    // its sandboxed engine
	agent       int    // pasta's agent in the namespace, 0 for passt
	ctl         string // the control socket, "" without
	pasta       bool
	// Where the guest reaches the host's servers: their ports on host
	// loopback, through the gateways.
	tcp4, tcp6, udp4, udp6 int
	// made counts the flows the workload opened that may linger after
	// it, until their protocol's idle timeout: UDP and ICMP.
	madeUDP, madeICMP atomic.Int64
	pingLost          atomic.Int64 // pings that lost a reply
}

func (r *soakRig) dial(ns *Netns, addr string) (net.Conn, error) {
	c, err := ns.Dial("tcp", addr, 10*time.Second)
	if err == nil {
		c.SetDeadline(time.Now().Add(time.Minute))
	}
	return c, err
}

// request runs one exchange of soakServe's protocol over c: kind 0 reads
// a short answer whole, 1 resets before the answer, 2 abandons it mid
// transfer (a close with unread data), 3 half-closes an echo, 4 has the
// server reset.
func request(c net.Conn, kind int, seed byte) error {
	defer c.Close()
	n := int64(1000 + int(seed)*300)
	switch kind {
	case 0:
		fmt.Fprintf(c, "get %d %d\n", seed, n)
		sum, got, err := hashCopy(c)
		if err != nil || got != n || !bytes.Equal(sum, sumStream(seed, n)) {
			return fmt.Errorf("get %d: %d bytes (%v), SHA-256 equal: %v", n, got, err, bytes.Equal(sum, sumStream(seed, n)))
		}
	case 1:
		fmt.Fprintf(c, "get %d %d\n", seed, 4<<20)
		c.(*net.TCPConn).SetLinger(0)
	case 2:
		fmt.Fprintf(c, "get %d %d\n", seed, 4<<20)
		if _, err := io.ReadFull(c, make([]byte, 64<<10)); err != nil {
			return fmt.Errorf("get 4 MiB, 64 KiB of it: %v", err)
		}
	case 3:
		msg := bytes.Repeat([]byte{seed}, int(n))
		io.WriteString(c, "echo\n")
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
		if got, err := io.ReadAll(c); err != nil || !bytes.Equal(got, msg) {
			return fmt.Errorf("echo after a half-close: %d bytes of %d back (%v)", len(got), n, err)
		}
	case 4:
		io.WriteString(c, "rst\n")
		if got, err := io.ReadAll(c); len(got) != 0 || err == nil || isTimeout(err) {
			return fmt.Errorf("a server's reset: %d bytes, %v", len(got), err)
		}
	}
	return nil
}

// transfer moves size bytes one way and checks them by SHA-256.
func transfer(c net.Conn, up bool, seed byte, size int64) error {
	defer c.Close()
	if up {
		fmt.Fprintf(c, "put %d\n", size)
		if _, err := io.Copy(c, newStream(seed, size)); err != nil {
			return fmt.Errorf("put: %v", err)
		}
		got, err := io.ReadAll(c)
		if want := fmt.Sprintf("%x %d\n", sumStream(seed, size), size); string(got) != want {
			return fmt.Errorf("put %d: the server read %q (%v), want %q", size, got, err, want)
		}
		return nil
	}
	fmt.Fprintf(c, "get %d %d\n", seed, size)
	sum, n, err := hashCopy(c)
	if err != nil || n != size || !bytes.Equal(sum, sumStream(seed, size)) {
		return fmt.Errorf("get %d: %d bytes (%v), SHA-256 equal: %v", size, n, err, bytes.Equal(sum, sumStream(seed, size)))
	}
	return nil
}

// udpAskFrom sends msg from a new socket in ns to addr until an answer
// comes (three tries), and checks it with want.
func udpAskFrom(ns *Netns, addr string, msg []byte, want func([]byte) bool) error {
	var c net.PacketConn
	var err error
	if e := ns.do(func() { c, err = net.ListenPacket("udp", ":0") }); e != nil {
		return e
	}
	if err != nil {
		return err
	}
	defer c.Close()
	dst, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	buf := make([]byte, 65536)
	for range 3 {
		c.WriteTo(msg, dst)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, _, err := c.ReadFrom(buf)
		if err == nil && want(buf[:n]) {
			return nil
		}
	}
	return fmt.Errorf("%d bytes to %s: no good answer in three tries", len(msg), addr)
}

// soakSample is what the rig's processes hold at one moment.
type soakSample struct {
	at                           time.Duration
	fds                          map[string]int // the engine's, by kind (fdKinds)
	helperFds, agentFds, threads int
	rss                          int
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
	// pasta's engine holds sockets of the namespace too, where its agent is.
	s := soakSample{at: time.Since(start).Round(time.Second), fds: fdKinds(r.engine, r.agent), threads: threads,
		rss: rss(t, r.engine), cpu: procCPU([]int{r.engine}), helperFds: countFds(t, r.helper)}
	if r.agent != 0 {
		s.agentFds = countFds(t, r.agent)
	}
	return s
}

func (s soakSample) String() string {
	return fmt.Sprintf("%6v  tcp %4d udp %4d icmp %3d pipe %3d other %2d  helper %2d agent %2d  threads %2d  RSS %5.1f MiB  CPU %6.1f s",
		s.at, s.fds["tcp"], s.fds["udp"], s.fds["icmp"], s.fds["pipe"], s.fds["other"], s.helperFds, s.agentFds, s.threads, float64(s.rss)/(1<<20), s.cpu)
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
		r := &soakRig{host: w.Host, guest: w.Guest, helper: w.Proc.Process.Pid, engine: w.ServerPid(t), ctl: filepath.Join(w.Dir, "ctl")}
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
		soakServe(out)
		argv := []string{"--config-net", "-m", soakMTU,
			"-t", fmt.Sprintf("%d:%d", soakFwd, soakGuestPort), "-u", fmt.Sprintf("%d:%d", soakFwd+1, soakGuestPort+1),
			"-T", fmt.Sprintf("%d:%s", soakOutFwd, port(out.Addr())), "-U", "none", pid}
		if out, err := h.Cmd(pastaLink(t), argv...).CombinedOutput(); err != nil {
			t.Fatalf("pasta: %v: %s", err, out)
		}
		r := &soakRig{host: h, guest: ns, pasta: true, engine: pastaEngineOf(t, pid)}
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
		soakServe(l)
		return int(l.Addr().(*net.TCPAddr).Port)
	}
	echoUDP := func(ns *Netns, addr string) int {
		c := ns.ListenPacket(t, "udp", addr)
		echoPackets(c, "")
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	r.tcp4, r.tcp6 = serve(r.host, "127.0.0.1:0"), serve(r.host, "[::1]:0")
	r.udp4, r.udp6 = echoUDP(r.host, "127.0.0.1:0"), echoUDP(r.host, "[::1]:0")
	serve(r.guest, fmt.Sprintf(":%d", soakGuestPort))
	echoUDP(r.guest, fmt.Sprintf(":%d", soakGuestPort+1))
	dns := r.host.ListenPacket(t, "udp", net.JoinHostPort(hostDNS, "53"))
	servePackets(dns, func(q []byte) []byte { return dnsAnswer(q, "soak.gopasst.example", [4]byte{203, 0, 113, 5}) })

	workers := r.workers()
	start := time.Now()
	base := r.sample(t, start)
	t.Logf("start: %v", base)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string][2]int{} // name: ok, failed
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
					err := wk.run(i)
					mu.Lock()
					c := counts[wk.name]
					if err != nil {
						c[1]++
						if len(failures) < 20 {
							failures = append(failures, fmt.Sprintf("%s #%d at %v: %v", wk.name, i, time.Since(start).Round(time.Second), err))
						}
					} else {
						c[0]++
					}
					counts[wk.name] = c
					mu.Unlock()
					time.Sleep(wk.pause)
				}
			}()
		}
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
	g := r.guest
	ws := []soakWorker{
		{"short TCP, every ending", 8, 5 * time.Millisecond, func(i int) error {
			addr := net.JoinHostPort(hostGW, strconv.Itoa(r.tcp4))
			if i%2 == 1 {
				addr = net.JoinHostPort(host6GW, strconv.Itoa(r.tcp6))
			}
			c, err := r.dial(g, addr)
			if err != nil {
				return err
			}
			return request(c, i/2%5, byte(i))
		}},
		{"long transfers, both ways", 2, time.Second, func(i int) error {
			addr := net.JoinHostPort(hostGW, strconv.Itoa(r.tcp4))
			if i/2%2 == 1 {
				addr = net.JoinHostPort(host6GW, strconv.Itoa(r.tcp6))
			}
			c, err := r.dial(g, addr)
			if err != nil {
				return err
			}
			if err := transfer(c, i%2 == 0, byte(i), 32<<20); err != nil {
				// Where each end's TCP stands tells who stalled it.
				guest, _ := g.Cmd("ss", "-tinoem").CombinedOutput()
				host, _ := r.host.Cmd("ss", "-tinoem").CombinedOutput()
				// Where the guest's segments were lost: a tap's TX
				// drops are frames its ring had no room for, before
				// the engine could read them.
				link, _ := g.Cmd("ip", "-s", "link").CombinedOutput()
				return fmt.Errorf("%v\nthe guest's sockets:\n%s\nthe host's:\n%s\nthe guest's links:\n%s", err, guest, host, link)
			}
			return nil
		}},
		{"DNS through the stand-ins", 1, 100 * time.Millisecond, func(i int) error {
			q := []byte{byte(i >> 8), byte(i), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0,
				4, 's', 'o', 'a', 'k', 7, 'g', 'o', 'p', 'a', 's', 's', 't', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1}
			dns := hostGW
			if i%2 == 1 {
				dns = host6GW
			}
			r.madeUDP.Add(1)
			return udpAskFrom(g, net.JoinHostPort(dns, "53"), q, func(a []byte) bool {
				return len(a) > 4 && bytes.HasSuffix(a, []byte{203, 0, 113, 5}) && a[0] == q[0] && a[1] == q[1]
			})
		}},
		{"UDP echo, fragments both ways", 2, 50 * time.Millisecond, func(i int) error {
			addr := net.JoinHostPort(hostGW, strconv.Itoa(r.udp4))
			if i%2 == 1 {
				addr = net.JoinHostPort(host6GW, strconv.Itoa(r.udp6))
			}
			msg := bytes.Repeat([]byte{byte(i)}, []int{1, 512, 1472, 4000, 9000, 30000}[i/2%6])
			r.madeUDP.Add(1)
			return udpAskFrom(g, addr, msg, func(a []byte) bool { return bytes.Equal(a, msg) })
		}},
		// An echo reply may be dropped as any frame is where the link or
		// the guest's backlog is full: one of three must come back.
		{"ping, IPv4 and IPv6", 1, 200 * time.Millisecond, func(i int) error {
			args := []string{"ping", "-c", "3", "-W", "5", "-s", []string{"56", "4000", "20000"}[i/2%3]}
			dst := hostGW
			if i%2 == 1 {
				args, dst = append(args, "-6"), host6GW
			}
			r.madeICMP.Add(1)
			out, err := g.Cmd("busybox", append(args, dst)...).CombinedOutput()
			if strings.Contains(string(out), " 0 packets received") || !strings.Contains(string(out), "packets received") {
				return fmt.Errorf("%v: %v: %s", args, err, out)
			}
			if !strings.Contains(string(out), "3 packets received") {
				r.pingLost.Add(1)
			}
			return nil
		}},
		{"inbound TCP through -t", 2, 10 * time.Millisecond, func(i int) error {
			addr := []string{"127.0.0.1", "[::1]", hostAddr}[i%3] + ":" + strconv.Itoa(soakFwd)
			c, err := r.dial(r.host, addr)
			if err != nil {
				return err
			}
			if i%16 == 0 {
				return transfer(c, i%32 == 0, byte(i), 8<<20)
			}
			return request(c, i/3%5, byte(i))
		}},
		{"inbound UDP through -u", 1, 50 * time.Millisecond, func(i int) error {
			msg := bytes.Repeat([]byte{byte(i)}, []int{1, 1000, 3000, 20000}[i%4])
			r.madeUDP.Add(1)
			return udpAskFrom(r.host, []string{"127.0.0.1", "[::1]"}[i/4%2]+":"+strconv.Itoa(soakFwd+1), msg,
				func(a []byte) bool { return bytes.Equal(a, msg) })
		}},
	}
	if r.ctl != "" {
		ws = append(ws, soakWorker{"forward added, used, removed", 1, time.Second, func(i int) error {
			spec := fmt.Sprintf("%d:%d", soakCtlFwd, soakGuestPort)
			if out, err := exec.Command(gopasstBin, "ctl", r.ctl, "add", "-t", spec).CombinedOutput(); err != nil {
				return fmt.Errorf("ctl add: %v: %s", err, out)
			}
			c, err := r.dial(r.host, "127.0.0.1:"+strconv.Itoa(soakCtlFwd))
			if err == nil {
				err = request(c, 0, byte(i))
			}
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
			c, err := r.dial(g, "127.0.0.1:"+strconv.Itoa(soakOutFwd))
			if err != nil {
				return err
			}
			if i%16 == 0 {
				return transfer(c, i%32 == 0, byte(i), 8<<20)
			}
			return request(c, i%5, byte(i))
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
			end.fds["other"] <= base.fds["other"] && end.helperFds <= base.helperFds && end.agentFds <= base.agentFds
	}
	// A flow whose FIN the guest never acknowledges lives a minute.
	if !pollUntil(2*time.Minute, back) {
		t.Errorf("after the workload, the engine's descriptors did not go back to their start:\nstart %v\nnow   %v", base, end)
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
		peak.helperFds, peak.agentFds = max(peak.helperFds, s.helperFds), max(peak.agentFds, s.agentFds)
	}
	t.Logf("start %v\npeak  %v\nend   %v", base, peak, end)
}
