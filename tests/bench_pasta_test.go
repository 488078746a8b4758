package tests

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBenchPasta measures gopasst as pasta against upstream pasta and
// slirp4netns (podman 4's default), each serving a namespace of its own
// with the host's ports 15301 and 15302 published to the namespace's
// 5201 (iperf3) and 5202 (a byte echo): iperf3 each way and TCP_RR and
// TCP_CRR from a host loopback client (pasta's splice path) and from a
// host address that is not loopback (its tap path), iperf3 from the
// namespace to a host server, and the backend's CPU time per GB and per
// TCP_CRR connection. Rounds alternate between backends, each first in
// turn; medians go to bench/PASTA.md and into bench/RESULTS.md. It runs
// only under "make bench" (GOPASST_BENCH=1). GOPASST_BENCH_PASTA_ROWS, a
// regular expression, measures only the rows whose name it matches, and
// writes no report: to look at one path again without the quarter hour
// of the whole table.
func TestBenchPasta(t *testing.T) {
	rounds, backends := benchSetUp(t, pastaBackends)
	found := present(backends)
	results := map[string]map[string][]float64{} // backend -> metric -> samples
	for r := range rounds {
		for _, b := range inTurn(found, r) {
			t.Run(fmt.Sprintf("%s/round%d", b.name, r), func(t *testing.T) {
				for k, v := range benchPastaOne(t, b) {
					if results[b.name] == nil {
						results[b.name] = map[string][]float64{}
					}
					results[b.name][k] = append(results[b.name][k], v)
				}
			})
		}
	}
	if results["gopasst"] == nil {
		t.Fatal("gopasst was not measured: no report")
	}
	writePastaReport(t, results, backends, rounds, os.Getenv("GOPASST_BENCH_PASTA_ROWS") == "")
}

// benchClientAddr is the host's address that is not loopback, on an
// interface of the test's host namespace (a veth: this kernel may have no
// dummy): a client there takes pasta's tap path, and the namespace's
// outbound connections reach a server there.
const benchClientAddr = "192.0.2.10"

// asNobody runs a command as nobody.
var asNobody = []string{"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"}

// Published ports: host 15301 and 15302 to the namespace's 5201 and 5202.
const pastaPublish = "15301:5201,15302:5202"

// pastaBackends finds gopasst linked as pasta, upstream pasta (beside
// $PASST) and slirp4netns; argv has {pid} for the namespace's process.
func pastaBackends(t *testing.T) []backend {
	args := []string{"--config-net", "-t", pastaPublish, "-u", "none", "-T", "none", "-U", "none", "{pid}"}
	gv, _ := exec.Command(gopasstBin, "--version").Output()
	bs := []backend{{name: "gopasst", version: strings.TrimSpace(string(gv)) + " as pasta",
		argv: append([]string{pastaLink(t)}, args...)}}
	if p, err := passtPath(); err != nil {
		bs = append(bs, backend{name: "pasta", missing: err.Error()})
	} else if pasta := filepath.Join(filepath.Dir(p), "pasta"); exec.Command(pasta, "--version").Run() != nil {
		bs = append(bs, backend{name: "pasta", missing: pasta + " does not run"})
	} else {
		bs = append(bs, backend{name: "pasta", version: passtVersion(pasta), argv: append([]string{pasta}, args...)})
	}
	if p, err := exec.LookPath("slirp4netns"); err == nil {
		out, _ := exec.Command("dpkg-query", "-W", "-f", "${Version}", "slirp4netns").Output()
		// As podman 4 runs it, with its MTU; ports through the API socket.
		bs = append(bs, backend{name: "slirp4netns", version: "slirp4netns " + string(out) + " (Debian)",
			argv: []string{"setsid", p, "--configure", "--mtu", "65520", "--api-socket", "{api}", "--ready-fd", "3", "{pid}", "tap0"}})
	} else {
		bs = append(bs, backend{name: "slirp4netns", missing: "not installed (Debian package slirp4netns)"})
	}
	for _, b := range bs {
		if b.missing != "" {
			t.Logf("%s: missing: %s", b.name, b.missing)
		}
	}
	return bs
}

// benchPastaOne measures one backend serving a new namespace.
func benchPastaOne(t *testing.T, b backend) map[string]float64 {
	h := newHost(t, WorldOpts{})
	h.Run(t, "ip", "link", "add", "bench0", "type", "veth", "peer", "name", "bench0-peer")
	h.Run(t, "ip", "addr", "add", benchClientAddr+"/32", "dev", "bench0")
	h.Run(t, "ip", "link", "set", "bench0-peer", "up")
	h.Run(t, "ip", "link", "set", "bench0", "up")
	// Rootless, as containers run: the namespace's process owns a user
	// namespace of its own, and the backend, as that user, joins it.
	ns, pid, kill := pidNetns(t, h, append(asNobody, "unshare", "--user", "--map-root-user", "--net")...)
	pids := startPastaPeer(t, b, h, pid, kill)
	rrEcho(ns.Listen(t, "tcp", ":5202"))

	m := map[string]float64{}
	measure := func(name string, srv *Netns, srvArgs []string, cli *Netns, args ...string) {
		if !pastaRow(name) {
			return
		}
		cpu0 := procCPU(pids)
		res := iperfIn(t, srv, srvArgs, cli, append([]string{"-t", "3"}, args...)...)
		m[name+" Gbit/s"] = res.End.SumReceived.BitsPerSecond / 1e9
		m[name+" retransmits"] = res.End.SumSent.Retransmits
		if gb := res.End.SumReceived.Bytes / 1e9; gb > 0 {
			m[name+" CPU s/GB"] = (procCPU(pids) - cpu0) / gb
		}
	}
	for _, c := range []struct{ name, addr, bind string }{
		{"loopback client", "127.0.0.1", ""},
		{"non-loopback client", benchClientAddr, benchClientAddr},
	} {
		client := []string{"-c", c.addr, "-p", "15301"}
		if c.bind != "" {
			client = append(client, "-B", c.bind)
		}
		measure("published, "+c.name+": host→ns", ns, []string{"-p", "5201"}, h, client...)
		measure("published, "+c.name+": ns→host", ns, []string{"-p", "5201"}, h, append(client, "-R")...)
		name := "published, " + c.name + ": TCP_"
		if !pastaRow(name+"RR") && !pastaRow(name+"CRR") {
			continue
		}
		dialer, target := net.Dialer{Timeout: 5 * time.Second}, net.JoinHostPort(c.addr, "15302")
		if c.bind != "" {
			dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(c.bind)}
		}
		// The first connection is TCP_RR's, the others TCP_CRR's.
		var conns, cpu0, cpuRR float64
		rr, crr := requestResponseVia(t, func() (conn net.Conn, err error) {
			switch conns++; conns {
			case 1:
				cpu0 = procCPU(pids)
			case 2:
				now := procCPU(pids)
				cpuRR, cpu0 = now-cpu0, now
			}
			h.Do(t, func() { conn, err = dialer.Dial("tcp", target) })
			return conn, err
		})
		m[name+"RR trans/s"] = rr
		m[name+"CRR trans/s"] = crr
		// CPU per transaction or connection holds better than the rate
		// on a loaded machine: the backend's own work, not the time it
		// waited.
		m[name+"RR CPU µs/trans"] = cpuRR * 1e6 / (rr * rrTime.Seconds())
		m[name+"CRR CPU µs/conn"] = (procCPU(pids) - cpu0) * 1e6 / (conns - 1)
	}
	measure("outbound: ns→host", h, []string{"-B", benchClientAddr, "-p", "15201"}, ns, "-c", benchClientAddr, "-p", "15201")
	return m
}

// startPastaPeer starts b for pid's namespace in h and returns its
// processes once it forwards; they end with the test, then kill ends
// pid.
func startPastaPeer(t *testing.T, b backend, h *Netns, pid string, kill func()) []int {
	api := filepath.Join(sharedDir(t), "api.sock")
	var argv []string
	for _, a := range append(slices.Clone(asNobody), b.argv...) {
		argv = append(argv, strings.NewReplacer("{pid}", pid, "{api}", api).Replace(a))
	}
	// The backend's processes end with the test (pasta, given a
	// namespace's path, would outlive it), then its namespace.
	var pids []int
	t.Cleanup(func() {
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		waitLong(t, b.name+" to exit", 10*time.Second, func() bool {
			return !slices.ContainsFunc(pids, func(p int) bool {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
				return err == nil && !strings.Contains(string(b), ") Z ")
			})
		})
		kill()
	})
	var roots []int
	if b.name == "slirp4netns" {
		roots = []int{startSlirp4netns(t, h, argv, api)}
	} else {
		// pasta goes to the background once ready.
		if out, err := h.Cmd(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", b.name, err, out)
		}
		exe, _ := filepath.EvalSymlinks(b.argv[0]) // upstream pasta runs as passt, or passt.avx2
		roots = mentioning(pid, exe)
	}
	tree := roots
	for i := 0; i < len(tree); i++ {
		tree = append(tree, childPids(tree[i])...)
	}
	slices.Sort(tree)
	pids = slices.Compact(tree)
	return pids
}

// startSlirp4netns starts slirp4netns, waits until it has configured the
// namespace, and publishes the ports through its API socket (add_hostfwd,
// as podman does with port_handler=slirp4netns). It returns its PID.
func startSlirp4netns(t *testing.T, h *Netns, argv []string, api string) int {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := h.Cmd(argv[0], argv[1:]...)
	cmd.ExtraFiles = []*os.File{w}
	err = cmd.Start()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	r.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := r.Read(make([]byte, 1)); err != nil {
		t.Fatalf("slirp4netns never ready: %v", err)
	}
	for _, fwd := range strings.Split(pastaPublish, ",") {
		host, guest, _ := strings.Cut(fwd, ":")
		hp, _ := strconv.Atoi(host)
		gp, _ := strconv.Atoi(guest)
		req, _ := json.Marshal(map[string]any{"execute": "add_hostfwd", "arguments": map[string]any{
			"proto": "tcp", "host_addr": "0.0.0.0", "host_port": hp, "guest_port": gp}})
		c, err := net.DialTimeout("unix", api, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(req)
		c.(*net.UnixConn).CloseWrite()
		reply := make([]byte, 512)
		n, _ := c.Read(reply)
		c.Close()
		if !strings.Contains(string(reply[:n]), `"return"`) {
			t.Fatalf("slirp4netns add_hostfwd %s: %q", fwd, reply[:n])
		}
	}
	return cmd.Process.Pid
}

// writePastaReport writes bench/PASTA.md, with every figure against
// upstream pasta's, puts it in bench/RESULTS.md in place of the last
// run's, and logs it.
func writePastaReport(t *testing.T, results map[string]map[string][]float64, backends []backend, rounds int, write bool) {
	var names, versions, missing []string
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
	fmt.Fprintf(&md, "# gopasst as pasta\n\n%s; %s, %d cores, %s; Linux %s; %s.\n\nBackends: %s.\n\n",
		time.Now().UTC().Format("2006-01-02"), cpuModel(), runtime.NumCPU(), memTotal(),
		strings.TrimSpace(string(kernel)), runtime.Version(), strings.Join(versions, "; "))
	fmt.Fprintf(&md, "Medians of %d rounds, alternating between backends, each first in turn, with the range of the rounds. "+
		"Each backend serves a namespace of its own, rootless: the namespace belongs to a user namespace of "+
		"nobody's, which the backend, run as nobody, joins. Host ports are published to it (pasta's -t; "+
		"slirp4netns's add_hostfwd on its API socket, podman's port_handler=slirp4netns; MTU 65520 for all); "+
		"the loopback client takes pasta's splice path, the non-loopback one (on %s, an interface of the "+
		"test's host namespace) its tap path; outbound goes from the namespace to a server there. "+
		"CPU s/GB is the backend's process tree's CPU time per GB received, CPU µs/conn the same per TCP_CRR "+
		"connection. 3 s iperf3 runs.\n\n", rounds, benchClientAddr)
	fmt.Fprintf(&md, "| metric | %s |", strings.Join(names, " | "))
	var others []string
	for _, n := range names {
		if n != "pasta" && results["pasta"] != nil {
			others = append(others, n)
			fmt.Fprintf(&md, " %s ÷ pasta |", n)
		}
	}
	md.WriteString("\n|---|" + strings.Repeat("---|", len(names)+len(others)) + "\n")
	for _, m := range metrics {
		fmt.Fprintf(&md, "| %s |", m)
		for _, n := range names {
			fmt.Fprintf(&md, " %s |", fmtFigure(median(results[n][m]), results[n][m]))
		}
		for _, n := range others {
			if p := median(results["pasta"][m]); p != 0 {
				fmt.Fprintf(&md, " %.2f |", median(results[n][m])/p)
			} else {
				md.WriteString(" – |")
			}
		}
		md.WriteString("\n")
	}
	if len(missing) > 0 {
		md.WriteString("\n" + strings.Join(missing, "\n") + "\n")
	}
	t.Logf("\n%s", md.String())
	if !write {
		return
	}
	dir := filepath.Join("..", "bench")
	os.MkdirAll(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, pastaReport), []byte(md.String()), 0o644); err != nil {
		t.Error(err)
	}
	// TestBench, when it runs after, writes RESULTS.md again with this
	// section last; alone, this test replaces its own last section.
	all, _ := os.ReadFile(filepath.Join(dir, "RESULTS.md"))
	s := string(all)
	if i := strings.Index(s, "\n## gopasst as pasta\n"); i >= 0 {
		s = s[:i]
	}
	if err := os.WriteFile(filepath.Join(dir, "RESULTS.md"), []byte(s+"\n#"+md.String()), 0o644); err != nil {
		t.Error(err)
	}
}

// pastaRow tells whether the row name is to be measured.
func pastaRow(name string) bool {
	return regexp.MustCompile(os.Getenv("GOPASST_BENCH_PASTA_ROWS")).MatchString(name)
}
