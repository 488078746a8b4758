package tests

import (
	"cmp"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pastaLink is gopasst linked as pasta, as podman and rootlesskit find
// it, in a directory anyone can reach; GOPASST_TEST_PASTA=PATH runs the
// tests against another pasta (upstream's, to check what they expect).
func pastaLink(t testing.TB) string {
	t.Helper()
	p := filepath.Join(sharedDir(t), "pasta")
	if err := os.Symlink(pastaExe(), p); err != nil {
		t.Fatal(err)
	}
	return p
}

// pastaExe is the pasta the tests run.
func pastaExe() string {
	return cmp.Or(os.Getenv("GOPASST_TEST_PASTA"), gopasstBin)
}

// readFileWait waits for a file the script writes, and returns it.
func readFileWait(t testing.TB, what, path string) string {
	t.Helper()
	var b []byte
	waitLong(t, what, 30*time.Second, func() bool {
		var err error
		b, err = os.ReadFile(path)
		return err == nil && strings.HasSuffix(string(b), "\n")
	})
	return strings.TrimSpace(string(b))
}

// mentioning lists the processes whose command line names dir, a
// directory of this test's own, and whose executable's path starts with exe.
func mentioning(dir, exe string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		x, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if strings.Contains(string(cmdline), dir) && strings.HasPrefix(x, exe) { // pasta may be pasta.avx2
			pids = append(pids, pid)
		}
	}
	return pids
}

// echoGreeting serves each connection a line and closes it.
func echoGreeting(l net.Listener, greeting string) {
	acceptLoop(l, func(c net.Conn) { io.WriteString(c, greeting+"\n"); c.Close() })
}

// readGreeting connects and reads what echoGreeting says.
func readGreeting(dial func() (net.Conn, error)) string {
	c, err := dial()
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	return strings.TrimSpace(string(b))
}

// podman 5 runs pasta, inside its rootless user namespace, on a network
// namespace bound to a file, with exactly this command line for
// "podman run -p 18082:80". Replayed: pasta exits 0 once ready, the
// namespace has the host's address, routes and MTU, the host reaches the
// container's port 80 through 127.0.0.1:18082, the container reaches the
// host at --map-guest-addr, and pasta exits once the file is removed.
func TestPastaPodman(t *testing.T) {
	needRoot(t)
	needReachable(t)
	h := newHost(t, WorldOpts{})
	pasta := pastaLink(t)
	d := sharedDir(t)
	script := `
unshare -n sleep 600 & pid=$!
while [ "$(readlink /proc/$pid/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do sleep 0.05; done
echo $pid > D/sleep.pid
touch D/netns && mount --bind /proc/$pid/ns/net D/netns || exit 1
ARGS="--config-net -t 18082-18082:80-80 --dns-forward 169.254.1.1 -u none -T none -U none --no-map-gw --quiet --netns D/netns"
PASTA $ARGS --map-guest-addr 169.254.1.2 > D/pasta.out 2>&1
rc=$?
# podman's own retry, for a pasta without --map-guest-addr
if [ $rc = 1 ] && grep -q "unrecognized option '--map-guest-addr" D/pasta.out; then
	touch D/retried
	PASTA $ARGS > D/pasta.out 2>&1
	rc=$?
fi
echo $rc > D/pasta.rc
while [ ! -e D/remove ]; do sleep 0.1; done
umount -l D/netns && rm D/netns # as podman: MNT_DETACH
while [ ! -e D/done ]; do sleep 0.1; done
kill $pid
`
	script = strings.NewReplacer("D/", d+"/", "PASTA", pasta).Replace(script)
	cmd := h.Cmd("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		"unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(d, "remove"), nil, 0o644)
		os.WriteFile(filepath.Join(d, "done"), nil, 0o644)
		pids := mentioning(d, "")
		if b, err := os.ReadFile(filepath.Join(d, "sleep.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				pids = append(pids, pid)
			}
		}
		for _, pid := range pids {
			if p, err := os.FindProcess(pid); err == nil {
				p.Kill()
			}
		}
		cmd.Wait()
	})
	pid := readFileWait(t, "the container's namespace", filepath.Join(d, "sleep.pid"))
	rc := readFileWait(t, "pasta's exit", filepath.Join(d, "pasta.rc"))
	msg, _ := os.ReadFile(filepath.Join(d, "pasta.out"))
	if rc != "0" {
		t.Fatalf("pasta exited %s: %s\nscript: %s", rc, msg, out.String())
	}
	ns := &Netns{Path: "/proc/" + pid + "/ns/net"}
	addr := ns.Run(t, "ip", "addr", "show", "uplink")
	route := ns.Run(t, "ip", "route")
	for _, want := range []string{"inet " + hostAddr + "/" + hostPrefix, "mtu 65520", "inet6 " + host6Addr + "/64", ",UP,"} {
		if !strings.Contains(addr, want) {
			t.Errorf("the namespace's uplink lacks %q:\n%s", want, addr)
		}
	}
	if !strings.Contains(route, "default via "+hostGW+" dev uplink") {
		t.Errorf("the namespace's routes lack the default via %s:\n%s", hostGW, route)
	}
	if route6 := ns.Run(t, "ip", "-6", "route"); !strings.Contains(route6, "default via "+host6GW+" dev uplink") {
		t.Errorf("the namespace's IPv6 routes lack the default via %s:\n%s", host6GW, route6)
	}

	// The host reaches the container's port 80 through its own 18082.
	echoGreeting(ns.Listen(t, "tcp", ":80"), "container")
	if got := readGreeting(func() (net.Conn, error) { return h.Dial("tcp", "127.0.0.1:18082", 5*time.Second) }); got != "container" {
		t.Errorf("127.0.0.1:18082 on the host answered %q, want the container's server", got)
	}
	// The container reaches the host's own address at 169.254.1.2.
	if _, err := os.Stat(filepath.Join(d, "retried")); err == nil {
		t.Errorf("pasta refused --map-guest-addr, and podman retried without it")
	} else {
		l := h.Listen(t, "tcp", hostAddr+":0")
		echoGreeting(l, "host")
		if got := readGreeting(func() (net.Conn, error) {
			return ns.Dial("tcp", "169.254.1.2:"+port(l.Addr()), 5*time.Second)
		}); got != "host" {
			t.Errorf("169.254.1.2 from the container answered %q, want the host's server", got)
		}
	}

	// Removing the file ends pasta: its processes and its forward go.
	os.WriteFile(filepath.Join(d, "remove"), nil, 0o644)
	waitLong(t, "pasta to exit once the namespace's file is gone", 30*time.Second, func() bool {
		for _, p := range mentioning(d, pastaExe()) {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p)); !strings.Contains(string(b), ") Z ") {
				return false
			}
		}
		c, err := h.Dial("tcp", "127.0.0.1:18082", time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}

// rootlessKit is the rootlesskit whose pasta driver the tests run:
// Docker's rootless mode and nerdctl use it.
const rootlessKit = "v2.3.6"

// rootlesskit v2 runs pasta for its namespace, as an unprivileged user
// with a subordinate ID range (bind-mounted over /etc/subuid and
// /etc/subgid in a mount namespace of the test's own): tap0 gets
// 10.0.2.100/24, the default route via 10.0.2.2 and MTU 65520, the
// namespace reaches a host server through the gateway, and the host
// reaches a server the namespace starts later, through -t auto; with
// --detach-netns, pasta joins the namespace by --userns and --netns.
// Docker rootless's flags (moby contrib/dockerd-rootless.sh, 2026-08, its
// defaults for --net=pasta) add --disable-host-loopback, which rootlesskit
// passes on as --no-map-gw: the gateway no longer reaches the host's
// loopback, and the rest works.
func TestPastaRootlesskit(t *testing.T) {
	needRoot(t)
	needReachable(t)
	needBusybox(t)
	for _, tool := range []string{"newuidmap", "nsenter", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (Debian packages uidmap, util-linux)", tool)
		}
	}
	rk, err := goInstall("github.com/rootless-containers/rootlesskit/v2/cmd/rootlesskit", rootlessKit)
	if err != nil {
		t.Skip(err)
	}
	const docker = "--mtu=65520 --slirp4netns-sandbox=auto --slirp4netns-seccomp=auto --disable-host-loopback " +
		"--copy-up=/etc --copy-up=/run --propagation=rslave --detach-netns"
	for _, detach := range []string{"", "--detach-netns", docker} {
		name := map[string]string{"": "pid", docker: "dockerd-rootless"}[detach]
		t.Run(cmp.Or(name, detach), func(t *testing.T) {
			h := newHost(t, WorldOpts{})
			pasta := pastaLink(t)
			d := sharedDir(t)
			for _, f := range []string{"subuid", "subgid"} {
				if err := os.WriteFile(filepath.Join(d, f), []byte("nobody:200000:65536\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			hostSrv := h.Listen(t, "tcp", "127.0.0.1:0")
			echoGreeting(hostSrv, "host")
			inside := `
		busybox ip addr show tap0 | sed 's/^/ADDR /'
		busybox ip route | sed 's/^/ROUTE /'
		busybox nc 10.0.2.2 HOSTPORT < /dev/null | sed 's/^/HOST /'
		echo ns | busybox nc -l -p 8091 > /dev/null
		echo served > D/served
		`
			inside = strings.NewReplacer("D/", d+"/", "HOSTPORT", port(hostSrv.Addr())).Replace(inside)
			run := `busybox sh -c "$0"`
			if detach != "" {
				// The command stays in rootlesskit's first namespace; pasta
				// serves the detached one, which it enters by --userns/--netns.
				run = `nsenter --net=` + d + `/state/netns busybox sh -c "$0"`
			}
			outside := fmt.Sprintf(`mount --bind %[1]s/subuid /etc/subuid && mount --bind %[1]s/subgid /etc/subgid &&
		exec setpriv --reuid 65534 --regid 65534 --clear-groups env HOME=%[1]s XDG_RUNTIME_DIR=%[1]s \
			%[2]s --state-dir %[1]s/state --net=pasta --pasta-binary=%[3]s --port-driver=implicit %[4]s %[5]s`, d, rk, pasta, detach, run)
			cmd := h.Cmd("unshare", "--mount", "--propagation", "private", "sh", "-c", outside, inside)
			out := &syncBuffer{}
			cmd.Stdout, cmd.Stderr = out, out
			cmd.WaitDelay = 5 * time.Second
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			var waitErr error
			go func() { waitErr = cmd.Wait(); close(exited) }()
			t.Cleanup(func() {
				select {
				case <-exited:
				default:
					for _, pid := range mentioning(d, "") {
						if p, err := os.FindProcess(pid); err == nil {
							p.Kill()
						}
					}
					<-exited
				}
				if t.Failed() {
					t.Logf("rootlesskit's output:\n%s", out.String())
				}
			})
			// The namespace's server, started after pasta, through -t auto.
			var got string
			waitLong(t, "the namespace's port 8091 on the host (-t auto)", 60*time.Second, func() bool {
				got = readGreeting(func() (net.Conn, error) { return h.Dial("tcp", "127.0.0.1:8091", time.Second) })
				return got != ""
			})
			if got != "ns" {
				t.Errorf("127.0.0.1:8091 answered %q, want the namespace's server", got)
			}
			select {
			case <-exited:
				if waitErr != nil {
					t.Errorf("rootlesskit: %v", waitErr)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("rootlesskit did not exit after its command")
			}
			o := out.String()
			for _, want := range []string{"ADDR     inet 10.0.2.100/24", "mtu 65520", "ROUTE default via 10.0.2.2 dev tap0"} {
				if !strings.Contains(o, want) {
					t.Errorf("the namespace's output lacks %q", want)
				}
			}
			if reached := strings.Contains(o, "HOST host"); reached != (detach != docker) {
				t.Errorf("the host's loopback server reached through the gateway: %v, want %v", reached, detach != docker)
			}
			waitLong(t, "pasta to exit with rootlesskit", 30*time.Second, func() bool { return len(mentioning(d, pastaExe())) == 0 })
		})
	}
}

// pidNetns starts a process in a new network namespace from h's (with
// the unshare command given, "unshare --net" if none), and returns the
// namespace, the PID, and how to end it (at the test's end at the latest).
func pidNetns(t testing.TB, h *Netns, unshare ...string) (*Netns, string, func()) {
	t.Helper()
	if len(unshare) == 0 {
		unshare = []string{"unshare", "--net"}
	}
	// It lives as long as the test binary may run (-timeout), which a soak
	// test's pasta needs past 10 minutes, and not for ever after a panic.
	life := 600 * time.Second
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := d.Deadline(); ok {
			life = max(life, time.Until(dl))
		}
	}
	sleep := h.Cmd(unshare[0], append(unshare[1:], "sleep", strconv.Itoa(int(life.Seconds())))...)
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { sleep.Wait(); close(exited) }()
	kill := func() { sleep.Process.Kill(); <-exited }
	t.Cleanup(kill)
	pid := strconv.Itoa(sleep.Process.Pid)
	ns := &Netns{Path: "/proc/" + pid + "/ns/net"}
	// The process is in our namespace first, then in h's, then in its own.
	var hs, ours unix.Stat_t
	unix.Stat(h.file(), &hs)
	unix.Stat("/proc/self/ns/net", &ours)
	waitFor(t, "unshare's new namespace", func() bool {
		var st unix.Stat_t
		return unix.Stat(ns.Path, &st) == nil && st.Ino != hs.Ino && st.Ino != ours.Ino
	})
	return ns, pid, kill
}

// pastaAgent is the PID of the agent of the gopasst pasta whose command
// line names pid: a child of it with a tap in its environment (its
// command line is gopasst's path alone).
func pastaAgent(t *testing.T, pid string) string {
	t.Helper()
	parents := map[string]bool{}
	for _, p := range mentioning(pid, gopasstBin) {
		parents[strconv.Itoa(p)] = true
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err == nil && strings.Contains(string(env), "\x00GOPASST_PASTA_AGENT_TAP=") && parents[procStatus(t, e.Name())["PPid"]] {
			return e.Name()
		}
	}
	t.Fatalf("no pasta agent among the children of %v", parents)
	return ""
}

// -T and -U forward the namespace's ports to the host's loopback, given
// as specs and as auto (a host server's port appears in the namespace),
// for a PID's namespace joined with --netns-only; pasta goes to the
// background once ready and exits when the PID does.
func TestPastaNamespaceToHost(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	pasta := pastaLink(t)
	ns, pid, kill := pidNetns(t, h)
	tcpSrv := h.Listen(t, "tcp", "127.0.0.1:0")
	echoGreeting(tcpSrv, "host tcp")
	autoSrv := h.Listen(t, "tcp", "127.0.0.1:0")
	echoGreeting(autoSrv, "host auto")
	udpSrv := h.ListenPacket(t, "udp", "127.0.0.1:0")
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := udpSrv.ReadFrom(buf)
			if err != nil {
				return
			}
			udpSrv.WriteTo(append([]byte("host udp: "), buf[:n]...), from)
		}
	}()
	out, err := h.Cmd(pasta, "--config-net", "--netns-only", "-t", "none", "-u", "none",
		"-T", "18301:"+port(tcpSrv.Addr()), "-T", "auto", "-U", "18302:"+port(udpSrv.LocalAddr()), pid).CombinedOutput()
	if err != nil {
		t.Fatalf("pasta: %v: %s", err, out)
	}
	if got := readGreeting(func() (net.Conn, error) { return ns.Dial("tcp", "127.0.0.1:18301", 5*time.Second) }); got != "host tcp" {
		t.Errorf("-T: the namespace's 127.0.0.1:18301 answered %q", got)
	}
	if got := readGreeting(func() (net.Conn, error) {
		return ns.Dial("tcp", "127.0.0.1:"+port(autoSrv.Addr()), 5*time.Second)
	}); got != "host auto" {
		t.Errorf("-T auto: the namespace's 127.0.0.1:%s answered %q", port(autoSrv.Addr()), got)
	}
	c, err := ns.Dial("udp", "127.0.0.1:18302", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("ping"))
	buf := make([]byte, 100)
	n, _ := c.Read(buf)
	if got := string(buf[:n]); got != "host udp: ping" {
		t.Errorf("-U: the namespace's 127.0.0.1:18302 answered %q", got)
	}
	// The agent served those binds under its filter.
	if pastaExe() == gopasstBin {
		st := procStatus(t, pastaAgent(t, pid))
		if st["Seccomp"] != "2" || st["NoNewPrivs"] != "1" {
			t.Errorf("the pasta agent: Seccomp %q, NoNewPrivs %q, want 2 and 1", st["Seccomp"], st["NoNewPrivs"])
		}
	}
	// The PID exits: so does pasta.
	kill()
	waitLong(t, "pasta to exit with the PID", 30*time.Second, func() bool {
		for _, p := range mentioning(pid, pastaExe()) {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p)); !strings.Contains(string(b), ") Z ") {
				return false
			}
		}
		return true
	})
}

// A host loopback client of a -t port goes socket to socket into the
// namespace (pasta's loopback path): 100 MiB each way arrive whole, and
// the namespace's server sees the connection come from its own address,
// as pasta's; with --no-splice it comes through the tap, from elsewhere.
func TestPastaSplice(t *testing.T) {
	needRoot(t)
	const size = 100 << 20
	for _, mode := range []string{"splice", "no-splice", "splice-only"} {
		t.Run(mode, func(t *testing.T) {
			h := newHost(t, WorldOpts{})
			ns, pid, _ := pidNetns(t, h)
			peers := make(chan string, 1)
			up := ns.Listen(t, "tcp", ":8401")
			acceptLoop(up, func(c net.Conn) {
				defer c.Close()
				sum, n, _ := hashCopy(c)
				fmt.Fprintf(c, "%x %d\n", sum, n)
				host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
				peers <- host
			})
			down := ns.Listen(t, "tcp", ":8402")
			acceptLoop(down, func(c net.Conn) { io.Copy(c, newStream(2, size)); c.Close() })
			argv := []string{"--config-net", "-t", "18401:8401,18402:8402", "-u", "none", "-T", "none", "-U", "none", pid}
			if mode != "splice" {
				argv = append([]string{"--" + mode}, argv...)
			}
			if out, err := h.Cmd(pastaLink(t), argv...).CombinedOutput(); err != nil {
				t.Fatalf("pasta: %v: %s", err, out)
			}
			// --config-net configures nothing without a tap.
			links := ns.Run(t, "ip", "-o", "link")
			if onlyLo := strings.Count(strings.TrimSpace(links), "\n") == 0; onlyLo != (mode == "splice-only") {
				t.Errorf("%s: the namespace's links: %s", mode, links)
			}
			c, err := h.Dial("tcp", "127.0.0.1:18401", 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(120 * time.Second))
			if _, err := io.Copy(c, newStream(1, size)); err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).CloseWrite()
			got, _ := io.ReadAll(c)
			if want := fmt.Sprintf("%x %d\n", sumStream(1, size), size); string(got) != want {
				t.Errorf("host to namespace: the server read %q, want %q", got, want)
			}
			d, err := h.Dial("tcp", "127.0.0.1:18402", 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			d.SetDeadline(time.Now().Add(120 * time.Second))
			sum, n, err := hashCopy(d)
			if err != nil || n != size || string(sum) != string(sumStream(2, size)) {
				t.Errorf("namespace to host: %d bytes (%v), SHA-256 equal: %v", n, err, string(sum) == string(sumStream(2, size)))
			}
			// Spliced, a connection comes from the namespace's own address,
			// or with --splice-only from its loopback; else through the tap,
			// from another.
			peer := <-peers
			if via := map[string]string{hostAddr: "splice", "127.0.0.1": "splice-only"}[peer]; via != mode && (via != "" || mode != "no-splice") {
				t.Errorf("%s: the namespace's server saw the connection from %s (its own address %s means spliced, 127.0.0.1 spliced to its loopback)", mode, peer, hostAddr)
			}
		})
	}
}

// -u auto forwards a UDP port the namespace binds after pasta started,
// and -U auto one the host had bound before, but not pasta's own -u
// port; --pid names a process of
// pasta's that lives as long as it does.
func TestPastaAutoUDP(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	ns, pid, kill := pidNetns(t, h)
	echo := func(c net.PacketConn, prefix string) {
		go func() {
			buf := make([]byte, 1500)
			for {
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				c.WriteTo(append([]byte(prefix), buf[:n]...), from)
			}
		}()
	}
	hostSrv := h.ListenPacket(t, "udp", "127.0.0.1:0")
	echo(hostSrv, "host: ")
	pidFile := filepath.Join(sharedDir(t), "pasta.pid")
	out, err := h.Cmd(pastaLink(t), "--config-net", "-t", "none", "-u", "auto", "-u", "18701:8701", "-T", "none", "-U", "auto",
		"--pid", pidFile, pid).CombinedOutput()
	if err != nil {
		t.Fatalf("pasta: %v: %s", err, out)
	}
	// -U auto leaves alone the host port of pasta's own -u 18701: its
	// first scan is done once pasta is ready.
	ns.ListenPacket(t, "udp", ":18701")
	b, _ := os.ReadFile(pidFile)
	if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || unix.Kill(p, 0) != nil {
		t.Errorf("--pid file says %q, not a running process", b)
	}
	echo(ns.ListenPacket(t, "udp", ":8601"), "ns: ")
	ask := func(dial func() (net.Conn, error), msg string) string {
		c, err := dial()
		if err != nil {
			return ""
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(500 * time.Millisecond))
		c.Write([]byte(msg))
		buf := make([]byte, 100)
		n, _ := c.Read(buf)
		return string(buf[:n])
	}
	waitLong(t, "the namespace's UDP port 8601 on the host (-u auto)", 30*time.Second, func() bool {
		return ask(func() (net.Conn, error) { return h.Dial("udp", "127.0.0.1:8601", time.Second) }, "hi") == "ns: hi"
	})
	waitLong(t, "the host's UDP port in the namespace (-U auto)", 30*time.Second, func() bool {
		return ask(func() (net.Conn, error) {
			return ns.Dial("udp", "127.0.0.1:"+port(hostSrv.LocalAddr()), time.Second)
		}, "hi") == "host: hi"
	})
	kill()
}

// pasta runs nsenter as root, before the agent drops its capabilities:
// it takes it from the system's directories, never from PATH, whose
// first nsenter here would leave a mark.
func TestPastaNsenterNotFromPath(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	evil := t.TempDir()
	mark := filepath.Join(evil, "ran")
	script := "#!/bin/sh\ntouch " + mark + "\nexec /usr/bin/nsenter \"$@\"\n"
	if err := os.WriteFile(filepath.Join(evil, "nsenter"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := h.Cmd(pastaLink(t), "--config-net", "-f", "--", "sh", "-c", "echo ran in the namespace")
	cmd.Env = append(os.Environ(), "PATH="+evil+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ran in the namespace") {
		t.Errorf("pasta: %v: %s", err, out)
	}
	if _, err := os.Stat(mark); err == nil {
		t.Errorf("pasta ran %s/nsenter, found through PATH", evil)
	}
}
