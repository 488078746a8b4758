package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestBench compares gopasst with other user-mode backends on the same
// netns + tap harness and the same bridge. It is not a pass/fail test: it
// runs only under "make bench" (GOPASST_BENCH=1) and writes
// bench/RESULTS.md and bench/results.svg (and .png when rsvg-convert is
// there). Rounds alternate between backends, each first in turn
// (inTurn), and medians are reported.
func TestBench(t *testing.T) {
	rounds, backends := benchSetUp(t, benchBackends)
	results := map[string]map[string][]float64{} // backend -> metric -> samples
	for r := 0; r < rounds; r++ {
		for _, b := range inTurn(present(backends), r) {
			if results[b.name] == nil {
				results[b.name] = map[string][]float64{}
			}
			for _, mtu := range []string{"65520", "1500"} {
				t.Run(fmt.Sprintf("%s/mtu%s/round%d", b.name, mtu, r), func(t *testing.T) {
					o := WorldOpts{HostVia: b.hostVia}
					if b.argv == nil {
						o.Args = append([]string{"-m", mtu}, gopasstBenchArgs...)
					}
					for _, a := range b.argv {
						o.Backend = append(o.Backend, strings.ReplaceAll(a, "{mtu}", mtu))
					}
					w := newWorld(t, o)
					// Not every backend's DHCP gives the MTU. A tap drops
					// what overflows its queue, where a virtio NIC would
					// make the guest wait: at MTU 1500 a 1000-frame queue
					// holds less than one window, so give it room.
					w.Guest.Run(t, "ip", "link", "set", tapName, "mtu", mtu, "txqueuelen", "10000")
					for k, v := range benchOne(t, w, mtu == "65520") {
						key := k + " @" + mtu
						if strings.HasPrefix(k, "private memory") || strings.HasPrefix(k, "TCP_") {
							key = k
						}
						results[b.name][key] = append(results[b.name][key], v)
					}
				})
			}
		}
	}
	writeBenchReport(t, results, backends, rounds)
}

// needBench skips a benchmark outside make bench (GOPASST_BENCH=1).
func needBench(t *testing.T) {
	if os.Getenv("GOPASST_BENCH") == "" {
		t.Skip("benchmarks run with make bench")
	}
}

// benchSetUp skips a benchmark outside make bench, or without root or
// iperf3, and returns its rounds (GOPASST_BENCH_ROUNDS, 5 by default)
// and the backends found that GOPASST_BENCH_ONLY selects.
func benchSetUp(t *testing.T, found func(*testing.T) []backend) (int, []backend) {
	needBench(t)
	needRoot(t)
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("needs iperf3")
	}
	rounds, _ := strconv.Atoi(os.Getenv("GOPASST_BENCH_ROUNDS"))
	if rounds <= 0 {
		rounds = 5
	}
	return rounds, slices.DeleteFunc(found(t), func(b backend) bool { return !benchSelected(b.name) })
}

// benchSelected tells whether GOPASST_BENCH_ONLY (a comma-separated list
// of names), if set, names what a benchmark would measure.
func benchSelected(name string) bool {
	only := os.Getenv("GOPASST_BENCH_ONLY")
	return only == "" || strings.Contains(","+only+",", ","+name+",")
}

// pastaReport is TestBenchPasta's report in bench/, which TestBench
// includes in RESULTS.md.
const pastaReport = "PASTA.md"

// testsStarted is when this test binary started.
var testsStarted = time.Now()

// inTurn is s in round r's order: each element goes first in turn. A
// backend that always ran first was measured differently: of two builds
// of nearly the same engine, the one run first read 0.93 of the other's
// TCP_RR over the tap in 10 rounds, twice, whichever build it was.
func inTurn[T any](s []T, r int) []T {
	if len(s) == 0 {
		return s
	}
	k := r % len(s)
	return append(slices.Clone(s[k:]), s[:k]...)
}

// present is the backends that can be measured, the ones inTurn turns
// through: a missing one in the turn would leave another first twice.
func present(bs []backend) []backend {
	return slices.DeleteFunc(slices.Clone(bs), func(b backend) bool { return b.missing != "" })
}

// backend is one user-mode network backend under test.
type backend struct {
	name, version string
	// argv starts it, with {sock} for the stream socket the bridge
	// connects to, {netns} for a backend that makes its own tap in the
	// guest namespace, and {mtu}; nil for gopasst.
	argv    []string
	hostVia string // how its guest reaches host loopback
	missing string // why it is not measured
}

// gopasstBenchArgs run gopasst on the bridge's socket as QEMU 10.1's
// -netdev passt runs it on its own socket pair (--fd): lending its frames'
// pages, which -s does only when asked.
var gopasstBenchArgs = []string{"--lend-pages"}

// benchBackends finds every backend, reporting the ones that are missing.
func benchBackends(t *testing.T) []backend {
	debVersion := func(pkg string) string {
		out, _ := exec.Command("dpkg-query", "-W", "-f", "${Version}", pkg).Output()
		return string(out)
	}
	gopasstVer, _ := exec.Command(gopasstBin, "--version").Output()
	bs := []backend{{name: "gopasst", version: strings.TrimSpace(string(gopasstVer)) + " " + strings.Join(gopasstBenchArgs, " "), hostVia: hostGW}}
	if p, err := passtPath(); err == nil {
		bs = append(bs, backend{name: "passt", version: passtVersion(p),
			argv: []string{p, "-f", "-q", "-s", "{sock}", "-m", "{mtu}"}, hostVia: hostGW})
	} else {
		bs = append(bs, backend{name: "passt", missing: err.Error()})
	}
	if p, err := exec.LookPath("slirp4netns"); err == nil {
		bs = append(bs, backend{name: "slirp4netns", version: "slirp4netns " + debVersion("slirp4netns") + " (Debian)",
			argv: []string{p, "--configure", "--mtu", "{mtu}", "--netns-type=path", "{netns}", tapName}, hostVia: "10.0.2.2"})
	} else {
		bs = append(bs, backend{name: "slirp4netns", missing: "not installed (Debian package slirp4netns)"})
	}
	if p, err := goInstall("github.com/containers/gvisor-tap-vsock/cmd/gvproxy", gvisorTapVsock); err == nil {
		bs = append(bs, backend{name: "gvproxy", version: "gvproxy " + gvisorTapVsock,
			argv: []string{p, "-listen-qemu", "unix://{sock}", "-mtu", "{mtu}", "-ssh-port", "-1"}, hostVia: "192.168.127.254"})
	} else {
		bs = append(bs, backend{name: "gvproxy", missing: err.Error()})
	}
	for i, b := range bs {
		if b.missing != "" {
			t.Logf("%s: missing: %s", b.name, b.missing)
		}
		// gopasst's engine starts its own session, and with it its own
		// scheduler autogroup, which gets as much of the CPU as all of
		// the test's processes (iperf3, the bridge) together: passt in
		// the test's session, on this 2-core machine, lost a third of
		// the UDP it was sent where in its own it lost two thirds. Each
		// backend gets its own session, as passt does when it
		// daemonizes.
		if b.argv != nil {
			bs[i].argv = append([]string{"setsid"}, b.argv...)
		}
	}
	return bs
}

// passtPath is the passt to measure: $PASST (make bench builds upstream
// passt from ../shared/peers into it), else the one on PATH.
func passtPath() (string, error) {
	if p := os.Getenv("PASST"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("PASST=%s: %w", p, err)
		}
		return p, nil
	}
	p, err := exec.LookPath("passt")
	if err != nil {
		return "", fmt.Errorf("no PASST=path given and none on PATH")
	}
	return p, nil
}

// passtVersion is what the binary at p says of itself, with the Debian
// package's version when a package owns p (Debian's build says "unknown
// version").
func passtVersion(p string) string {
	out, _ := exec.Command(p, "--version").Output()
	v, _, _ := strings.Cut(string(out), "\n")
	v = fmt.Sprintf("%s (%s)", strings.TrimSpace(v), p)
	if owner, err := exec.Command("dpkg-query", "-S", p).Output(); err == nil {
		pkg, _, _ := strings.Cut(string(owner), ":")
		ver, _ := exec.Command("dpkg-query", "-W", "-f", "${Version}", pkg).Output()
		v += fmt.Sprintf(", Debian %s %s", pkg, ver)
	}
	return v
}

// benchDirs are the two directions of a TCP measurement: iperf3's
// client is the guest, and -R has the host send.
var benchDirs = []struct {
	name string
	args []string
}{{"guest→host", nil}, {"host→guest", []string{"-R"}}}

// benchOne measures one backend instance; full adds the latency and
// memory figures, taken once per round at the default MTU.
func benchOne(t *testing.T, w *World, full bool) map[string]float64 {
	m := map[string]float64{}
	pids := w.Pids() // gopasst is two processes: the helper and the engine
	for _, dir := range benchDirs {
		cpu0 := procCPU(pids)
		res := iperf(t, w, append([]string{"-t", "4"}, dir.args...)...)
		m["TCP "+dir.name+" Gbit/s"] = res.End.SumReceived.BitsPerSecond / 1e9
		// A backend that refuses data it has let the guest send costs the
		// sender retransmissions, which show here before they show as
		// a slow round.
		m["TCP "+dir.name+" retransmits"] = res.End.SumSent.Retransmits
		if gb := res.End.SumReceived.Bytes / 1e9; gb > 0 {
			m["CPU s/GB "+dir.name] = (procCPU(pids) - cpu0) / gb
		}
	}
	const udpSeconds, udpLen = 3, 1400
	cpu0, in0 := procCPU(pids), udpDelivered(t, w)
	u := iperf(t, w, "-u", "-b", "4G", "-l", strconv.Itoa(udpLen), "-t", strconv.Itoa(udpSeconds))
	m["UDP guest→host Gbit/s"] = u.End.Sum.BitsPerSecond / 1e9
	// The rate is the guest's, which the whole machine's load sets: on
	// 2 cores, a backend that delivers more leaves the guest's sender
	// less CPU, since the host's receiver then has more to read. What the
	// backend delivers, and what it spends per datagram delivered, are
	// its own.
	if n := udpDelivered(t, w) - in0; n > 0 {
		m["UDP guest→host delivered Gbit/s"] = n * udpLen * 8 / udpSeconds / 1e9
		m["CPU s/GB UDP guest→host"] = (procCPU(pids) - cpu0) / (n * udpLen / 1e9)
	}
	m["UDP loss %"] = u.End.Sum.LostPercent
	if !full {
		return m
	}
	// Most guests' traffic is light: a sender paced at 50 Mbit/s pauses
	// between bursts, and what a backend spends waking up shows.
	for _, dir := range benchDirs {
		cpu0 := procCPU(pids)
		iperf(t, w, append([]string{"-b", "50M", "-t", "5"}, dir.args...)...)
		m["CPU s in 5 s at 50 Mbit/s "+dir.name] = procCPU(pids) - cpu0
	}
	m["private memory idle MiB"] = procPrivate(pids)
	m["TCP_RR trans/s"], m["TCP_CRR trans/s"] = requestResponse(t, w)
	m["private memory 10k flows MiB"] = privateWithFlows(t, w, pids, 10000)
	return m
}

// udpDelivered counts the datagrams delivered in the host namespace,
// those its sockets had no room for included (/proc/net/snmp).
func udpDelivered(t *testing.T, w *World) float64 {
	out, err := w.Host.Cmd("cat", "/proc/net/snmp").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		var n float64
		for i, name := range names {
			if name == "InDatagrams" || name == "RcvbufErrors" {
				v, _ := strconv.ParseFloat(f[i], 64)
				n += v
			}
		}
		return n
	}
	return 0
}

type iperfResult struct {
	End struct {
		SumSent struct {
			Retransmits float64 `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		Sum struct {
			BitsPerSecond float64 `json:"bits_per_second"`
			LostPercent   float64 `json:"lost_percent"`
		} `json:"sum"`
	} `json:"end"`
}

// iperf runs an iperf3 client in the guest against a server on host
// loopback, reached through w.HostVia.
func iperf(t *testing.T, w *World, args ...string) iperfResult {
	t.Helper()
	const port = "15201"
	return iperfIn(t, w.Host, []string{"-B", "127.0.0.1", "-p", port}, w.Guest, append([]string{"-c", w.HostVia, "-p", port}, args...)...)
}

// iperfIn runs a one-off iperf3 server in srv and a client in cli, each
// with its own arguments, and returns the client's report.
func iperfIn(t *testing.T, srvNS *Netns, srvArgs []string, cli *Netns, args ...string) iperfResult {
	t.Helper()
	srv := srvNS.Cmd("iperf3", append([]string{"-s", "-1"}, srvArgs...)...)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Wait()
	time.Sleep(300 * time.Millisecond)
	out, err := cli.Cmd("iperf3", append([]string{"-J"}, args...)...).Output()
	if err != nil {
		srv.Process.Kill()
		t.Fatalf("iperf3 %v: %v\n%s", args, err, out)
	}
	var r iperfResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// byteEchoServer listens on host loopback and sends back each byte it
// gets, for request/response measurements.
func byteEchoServer(t *testing.T, w *World) net.Listener {
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	rrEcho(l)
	return l
}

// byteEcho serves each connection l accepts by sending back each byte,
// through Go's poller: for many idle connections, where rrEcho would
// hold a thread for each.
func byteEcho(l net.Listener) {
	acceptLoop(l, func(c net.Conn) {
		b := make([]byte, 1)
		for {
			if _, err := c.Read(b); err != nil {
				c.Close()
				return
			}
			c.Write(b)
		}
	})
}

// rrEcho serves each connection l accepts by sending back each byte, on
// a blocking descriptor (blocking): the server end of TCP_RR and TCP_CRR.
func rrEcho(l net.Listener) {
	acceptLoop(l, func(c net.Conn) {
		defer c.Close()
		blocking(c, func(fd int) error {
			b := make([]byte, 1)
			for {
				if n, err := readRetry(fd, b); err != nil || n == 0 {
					return err
				}
				if _, err := unix.Write(fd, b); err != nil {
					return err
				}
			}
		})
	})
}

// blocking runs f on c's descriptor in blocking mode, on a thread of its
// own, as netperf's ends run: each read sleeps in the kernel and wakes
// when the byte comes. Through Go's poller every transaction would add
// the runtime's own wake-ups on both ends, which cost more than a
// backend's whole turn and leave every backend at the same rate. A read
// gives up after 20 s, so a backend that stops answering fails the run
// instead of hanging it.
func blocking(c net.Conn, f func(fd int) error) error {
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		if ferr = unix.SetNonblock(int(fd), false); ferr != nil {
			return
		}
		tv := unix.Timeval{Sec: 20}
		if ferr = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); ferr != nil {
			return
		}
		ferr = f(int(fd))
	}); err != nil {
		return err
	}
	return ferr
}

// readRetry reads from a blocking descriptor, again when a signal (the Go
// runtime's own) cut the read short.
func readRetry(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Read(fd, b)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// requestResponse measures 1-byte request/response rates over one
// connection (TCP_RR) and with a new connection each time (TCP_CRR).
func requestResponse(t *testing.T, w *World) (rr, crr float64) {
	l := byteEchoServer(t, w)
	addr := net.JoinHostPort(w.HostVia, port(l.Addr()))
	return requestResponseVia(t, func() (net.Conn, error) { return w.Guest.Dial("tcp", addr, 5*time.Second) })
}

// rrTime is how long each of TCP_RR and TCP_CRR runs.
const rrTime = 3 * time.Second

// requestResponseVia measures them with the connections dial makes, to
// an rrEcho server.
func requestResponseVia(t *testing.T, dial func() (net.Conn, error)) (rr, crr float64) {
	b := make([]byte, 1)
	c, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n, start := 0, time.Now()
	if err := blocking(c, func(fd int) error {
		for time.Since(start) < rrTime {
			if _, err := unix.Write(fd, b); err != nil {
				return err
			}
			if m, err := readRetry(fd, b); err != nil || m == 0 {
				return fmt.Errorf("after %d transactions: %d bytes, %v", n, m, err)
			}
			n++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rr = float64(n) / time.Since(start).Seconds()
	n, start = 0, time.Now()
	for time.Since(start) < rrTime {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		c.Write(b)
		io.ReadFull(c, b)
		c.Close()
		n++
	}
	return rr, float64(n) / time.Since(start).Seconds()
}

// privateWithFlows opens n guest connections through the backend and
// reads its private memory while they are open.
func privateWithFlows(t *testing.T, w *World, pids []int, n int) float64 {
	// The host side closes at once, so the test holds one descriptor per
	// flow; the backend keeps each flow until the guest closes too.
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(l, func(c net.Conn) { c.Close() })
	addr := net.JoinHostPort(w.HostVia, port(l.Addr()))
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := w.Guest.Dial("tcp", addr, 10*time.Second)
		if err != nil {
			t.Logf("after %d connections: %v", len(conns), err)
			break
		}
		conns = append(conns, c)
	}
	time.Sleep(time.Second)
	return procPrivate(pids)
}

// procCPU is the user+system time of processes, in seconds; one that
// has gone (upstream pasta's short-lived children) counts nothing.
func procCPU(pids []int) float64 {
	var sum float64
	for _, pid := range pids {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		s := string(data)
		f := strings.Fields(s[strings.LastIndex(s, ")")+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		k, _ := strconv.ParseFloat(f[12], 64)
		sum += (u + k) / 100 // USER_HZ
	}
	return sum
}

// procPrivate is the memory processes hold alone, in MiB: their resident
// pages that no other process maps. Pages shared with QEMU (a vhost-user
// guest's memory) or between gopasst's two processes (the executable)
// are not theirs to count.
func procPrivate(pids []int) float64 {
	var kb float64
	for _, pid := range pids {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		for _, l := range strings.Split(string(data), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && (f[0] == "Private_Clean:" || f[0] == "Private_Dirty:") {
				v, _ := strconv.ParseFloat(f[1], 64)
				kb += v
			}
		}
	}
	return kb / 1024
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// writeBenchReport writes the Markdown table and the chart.
func writeBenchReport(t *testing.T, results map[string]map[string][]float64, backends []backend, rounds int) {
	var names, missing, versions []string
	for _, b := range backends {
		switch {
		case b.missing != "":
			missing = append(missing, fmt.Sprintf("%s: missing, %s.", b.name, b.missing))
		case results[b.name] != nil:
			names = append(names, b.name)
			versions = append(versions, b.version)
		}
	}
	var metrics []string
	for m := range results["gopasst"] {
		metrics = append(metrics, m)
	}
	slices.Sort(metrics)
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	var md strings.Builder
	fmt.Fprintf(&md, "# gopasst benchmark\n\n%s; %s, %d cores, %s; Linux %s; %s.\n\n",
		time.Now().UTC().Format("2006-01-02"), cpuModel(), runtime.NumCPU(), memTotal(),
		strings.TrimSpace(string(kernel)), runtime.Version())
	fmt.Fprintf(&md, "Backends: %s.\n\n", strings.Join(versions, "; "))
	fmt.Fprintf(&md, "Medians of %d rounds, alternating between backends, each first in turn; every guest is a netns "+
		"behind a tap, stream-socket backends behind the same bridge.\n\n", rounds)
	fmt.Fprintf(&md, "| metric | %s |", strings.Join(names, " | "))
	for _, n := range names[1:] {
		fmt.Fprintf(&md, " gopasst/%s |", n)
	}
	md.WriteString("\n|---|" + strings.Repeat("---|", 2*len(names)-1) + "\n")
	for _, m := range metrics {
		fmt.Fprintf(&md, "| %s |", m)
		for _, n := range names {
			fmt.Fprintf(&md, " %.3g |", median(results[n][m]))
		}
		for _, n := range names[1:] {
			if o := median(results[n][m]); o != 0 {
				fmt.Fprintf(&md, " %.2f |", median(results["gopasst"][m])/o)
			} else {
				md.WriteString(" - |")
			}
		}
		md.WriteString("\n")
	}
	if len(missing) > 0 {
		md.WriteString("\n" + strings.Join(missing, "\n") + "\n")
	}
	md.WriteString("\nEvery round of the throughput and retransmission figures, in the order run, since one bad round can move a median:\n\n")
	fmt.Fprintf(&md, "| metric | %s |\n|---|%s\n", strings.Join(names, " | "), strings.Repeat("---|", len(names)))
	for _, m := range metrics {
		if !strings.Contains(m, "Gbit/s") && !strings.Contains(m, "retransmits") {
			continue
		}
		fmt.Fprintf(&md, "| %s |", m)
		for _, n := range names {
			var r []string
			for _, v := range results[n][m] {
				r = append(r, fmt.Sprintf("%.3g", v))
			}
			fmt.Fprintf(&md, " %s |", strings.Join(r, ", "))
		}
		md.WriteString("\n")
	}
	md.WriteString("\n![chart](results.png)\n")
	dir := filepath.Join("..", "bench")
	os.MkdirAll(dir, 0o755)
	// TestBenchQEMU and TestBenchPasta, run before this test in the same
	// make bench, wrote their figures: they belong in the same report.
	for _, f := range []string{"QEMU.md", pastaReport} {
		if st, err := os.Stat(filepath.Join(dir, f)); err == nil && st.ModTime().After(testsStarted) {
			q, _ := os.ReadFile(filepath.Join(dir, f))
			md.WriteString("\n#" + string(q))
		}
	}
	os.WriteFile(filepath.Join(dir, "RESULTS.md"), []byte(md.String()), 0o644)
	svg := benchSVG(names, metrics, results)
	os.WriteFile(filepath.Join(dir, "results.svg"), []byte(svg), 0o644)
	if _, err := exec.LookPath("rsvg-convert"); err == nil {
		exec.Command("rsvg-convert", "-o", filepath.Join(dir, "results.png"), filepath.Join(dir, "results.svg")).Run()
	}
	t.Logf("\n%s", md.String())
}

// cpuModel is the first processor's model name.
func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// memTotal is the machine's memory, in GiB.
func memTotal() string {
	data, _ := os.ReadFile("/proc/meminfo")
	var kb float64
	fmt.Sscanf(string(data), "MemTotal: %f kB", &kb)
	return fmt.Sprintf("%.0f GiB", kb/(1<<20))
}

// benchSVG draws one group of bars per metric, each scaled to the best
// backend for that metric, labelled with the values.
func benchSVG(names, metrics []string, results map[string]map[string][]float64) string {
	colors := []string{"#2b7bb9", "#e07b39", "#5aa469", "#9b59b6"}
	const barH, left, width = 18, 260, 420
	rowH := (barH+2)*len(names) + 14
	var b strings.Builder
	h := rowH*len(metrics) + 40
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`, left+width+120, h)
	b.WriteString(`<rect width="100%" height="100%" fill="white"/>`)
	for i, n := range names {
		fmt.Fprintf(&b, `<rect x="%d" y="8" width="12" height="12" fill="%s"/><text x="%d" y="19">%s</text>`, left+i*100, colors[i%4], left+i*100+16, n)
	}
	for r, m := range metrics {
		y := 40 + r*rowH
		fmt.Fprintf(&b, `<text x="8" y="%d">%s</text>`, y+barH, m)
		best := 0.0
		for _, n := range names {
			best = max(best, median(results[n][m]))
		}
		for i, n := range names {
			v := median(results[n][m])
			wpx := 0.0
			if best > 0 {
				wpx = v / best * width
			}
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="%d" fill="%s"/><text x="%.0f" y="%d">%.3g</text>`,
				left, y+i*(barH+2), wpx, barH, colors[i%4], float64(left)+wpx+4, y+i*(barH+2)+13, v)
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}
