package tests

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The host side of every test: a template interface with IPv4 and IPv6
// default routes, in documentation address space, inside a namespace of
// our own. It is one
// end of a veth pair whose other end, in the same namespace, has no
// address: nothing ever leaves the namespaces.
const (
	hostAddr   = "198.51.100.2"
	hostPrefix = "24"
	hostGW     = "198.51.100.1"
	host6Addr  = "2001:db8:1::2"
	host6GW    = "2001:db8:1::1"
	tapName    = "tap0"
	hostDNS    = "127.0.0.53" // the "systemd-resolved" of the host namespace
)

// gopasstBin is the binary under test, built by TestMain.
var gopasstBin string

// syncBuffer collects a process's output for assertions.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// World is one gopasst instance with a guest attached.
type World struct {
	Host, Guest *Netns
	Dir         string
	Sock        string
	Proc        *exec.Cmd
	Log         *syncBuffer
	Bridge      *Bridge
	Relay       *exec.Cmd // the guest's relay (WorldOpts.Relay), if any
	RelayLog    *syncBuffer
	Lease       map[string]string // udhcpc's variables from the last lease
	// HostVia is the address through which the guest reaches the host's
	// loopback: the gateway with gopasst and passt.
	HostVia string

	gopasst bool     // w.Proc is gopasst, not another backend
	argv    []string // how w.Proc was started
	// VhostUser says the socket is a vhost-user back-end's (bootGuest).
	VhostUser bool
	// Device adds options to a QEMU guest's virtio-net device, as
	// "guest_csum=off" makes the guest check every checksum it receives
	// (frames over vhost-user are then never marked as checked).
	Device string
}

// WorldOpts varies the set-up.
type WorldOpts struct {
	Args    []string // extra gopasst options
	NoDHCP  bool     // leave the guest unconfigured
	NoPing  bool     // keep the host's default ping_group_range
	NoGuest bool     // start gopasst only; the test connects itself
	// BeforeStart runs in the host namespace's set-up, before gopasst.
	BeforeStart func(host *Netns)
	// Backend replaces gopasst with another backend, for benchmarks: its
	// argv, with "{sock}" for the socket path the bridge connects to
	// (passt, gvproxy), or with "{netns}" for the path of the guest
	// namespace, in which the backend makes and configures its own tap
	// (slirp4netns): then there is no bridge and no DHCP.
	Backend []string
	// Relay replaces the test's bridge with a relay that runs in the
	// guest namespace, makes the tap and carries its frames to {sock}
	// ("gopasst guest", gvforwarder).
	Relay []string
	// RelayTapFirst makes and raises the tap before the relay starts, as
	// gvforwarder's -preexisting requires: a frame it writes to a tap that
	// is still down fails with EIO and ends its session.
	RelayTapFirst bool
	// HostVia is how the backend's guest reaches host loopback (default:
	// the gateway).
	HostVia string
}

// newWorld builds host and guest namespaces, starts gopasst in the host
// namespace, bridges the guest's tap to it and runs DHCP in the guest.
func newWorld(t testing.TB, o WorldOpts) *World {
	t.Helper()
	needRoot(t)
	needBusybox(t)
	w := &World{Dir: sharedDir(t), Log: &syncBuffer{}, HostVia: hostGW, gopasst: o.Backend == nil}
	if o.HostVia != "" {
		w.HostVia = o.HostVia
	}
	w.Sock = filepath.Join(w.Dir, "gopasst.socket")
	w.Host = newHost(t, o)
	argv := append([]string{gopasstBin, "-f", "-s", "{sock}"}, o.Args...)
	if o.Backend != nil {
		// passt drops root for nobody, who must reach and write the
		// socket in w.Dir.
		needReachable(t)
		argv = append([]string(nil), o.Backend...)
	}
	ownTap := slices.ContainsFunc(argv, func(a string) bool { return strings.Contains(a, "{netns}") })
	netnsPath := ""
	if ownTap {
		w.Guest = newNetns(t, "gpg")
		netnsPath = filepath.Join("/run/netns", w.Guest.Name)
	}
	for i, a := range argv {
		argv[i] = strings.NewReplacer("{dir}", w.Dir, "{sock}", w.Sock, "{netns}", netnsPath).Replace(a)
	}
	w.argv = argv
	w.start(t)
	t.Cleanup(func() {
		w.Proc.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { w.Proc.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			w.Proc.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("gopasst log:\n%s", w.Log.String())
		}
	})
	if ownTap {
		waitFor(t, "the backend's tap in the guest", func() bool {
			out, _ := w.Guest.Cmd("ip", "-4", "addr", "show", tapName).Output()
			return strings.Contains(string(out), "inet ")
		})
		return w
	}
	waitFor(t, "gopasst socket", func() bool { _, err := os.Stat(w.Sock); return err == nil })

	if o.NoGuest {
		return w
	}
	w.Guest = newNetns(t, "gpg")
	if o.Relay != nil {
		if o.RelayTapFirst {
			w.Guest.Run(t, "ip", "tuntap", "add", tapName, "mode", "tap")
			w.Guest.Run(t, "ip", "link", "set", tapName, "up")
		}
		w.startRelay(t, o.Relay)
	} else {
		b, err := NewBridge(w.Guest, tapName, w.Sock)
		if err != nil {
			t.Fatal(err)
		}
		w.Bridge = b
		t.Cleanup(b.Close)
	}
	w.Guest.Run(t, "ip", "link", "set", tapName, "up")
	if !o.NoDHCP {
		w.DHCP(t)
	}
	return w
}

// startRelay runs argv ({sock} and {tap} replaced) in the guest namespace
// and waits for its tap; the relay must exit on SIGTERM when the test ends.
func (w *World) startRelay(t testing.TB, argv []string) {
	t.Helper()
	argv = slices.Clone(argv)
	for i, a := range argv {
		argv[i] = strings.NewReplacer("{sock}", w.Sock, "{tap}", tapName).Replace(a)
	}
	w.RelayLog = &syncBuffer{}
	w.Relay = w.Guest.Cmd(argv[0], argv[1:]...)
	w.Relay.Stdout, w.Relay.Stderr = w.RelayLog, w.RelayLog
	if err := w.Relay.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- w.Relay.Wait() }()
	t.Cleanup(func() {
		w.Relay.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			w.Relay.Process.Kill()
			t.Errorf("%s did not exit on SIGTERM", argv[0])
		}
		if t.Failed() {
			t.Logf("relay log:\n%s", w.RelayLog.String())
		}
	})
	waitFor(t, "the relay's tap", func() bool {
		return w.Guest.Cmd("ip", "link", "show", tapName).Run() == nil
	})
}

// newUplinkHost makes a host namespace whose template interface,
// uplink, is up, with neither address nor route.
func newUplinkHost(t testing.TB) *Netns {
	t.Helper()
	h := newNetns(t, "gph")
	h.Run(t, "ip", "link", "add", "uplink", "type", "veth", "peer", "name", "uplink-peer")
	h.Run(t, "ip", "link", "set", "uplink-peer", "up")
	h.Run(t, "ip", "link", "set", "uplink", "up")
	return h
}

// newHost makes the host namespace: the template interface with IPv4 and
// IPv6 default routes, ping sockets allowed (unless o.NoPing), a loopback
// resolver in resolv.conf, then o.BeforeStart.
func newHost(t testing.TB, o WorldOpts) *Netns {
	t.Helper()
	h := newUplinkHost(t)
	h.Run(t, "ip", "addr", "add", hostAddr+"/"+hostPrefix, "dev", "uplink")
	h.Run(t, "ip", "route", "add", "default", "via", hostGW)
	h.Run(t, "ip", "-6", "addr", "add", host6Addr+"/64", "dev", "uplink", "nodad")
	h.Run(t, "ip", "-6", "route", "add", "default", "via", host6GW, "dev", "uplink")
	if !o.NoPing {
		h.Sysctl(t, "net.ipv4.ping_group_range", "0 2147483647")
	}
	h.WriteEtc(t, "resolv.conf", "nameserver "+hostDNS+"\nsearch example.test lab.example\n")
	if o.BeforeStart != nil {
		o.BeforeStart(h)
	}
	return h
}

// udhcpcScript configures the interface from a lease and records the
// lease's variables, one per line, in $LEASE.
const udhcpcScript = `#!/bin/busybox sh
case "$1" in
bound|renew)
	env | grep -E '^(ip|mask|subnet|router|staticroutes|dns|mtu|domain|search|lease|serverid|hostname|opt81|interface)=' > "$LEASE"
	busybox ip -4 addr flush dev "$interface"
	busybox ip addr add "$ip/$mask" dev "$interface"
	[ -n "$mtu" ] && busybox ip link set "$interface" mtu "$mtu"
	if [ -n "$staticroutes" ]; then
		# Classless routes (RFC 3442) stand for the router option; a
		# route via 0.0.0.0 is on the link.
		set -- $staticroutes
		while [ $# -ge 2 ]; do
			if [ "$2" = 0.0.0.0 ]; then
				busybox ip route add "$1" dev "$interface"
			else
				busybox ip route add "$1" via "$2" dev "$interface"
			fi
			shift 2
		done
	else
		for r in $router; do busybox ip route add default via "$r" dev "$interface"; done
	fi
	;;
esac
exit 0
`

// DHCP runs busybox udhcpc in the guest and loads the lease.
func (w *World) DHCP(t testing.TB, extra ...string) {
	t.Helper()
	script := filepath.Join(w.Dir, "udhcpc.sh")
	lease := filepath.Join(w.Dir, "lease")
	if err := os.WriteFile(script, []byte(udhcpcScript), 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"LEASE=" + lease, "busybox", "udhcpc", "-i", tapName, "-f", "-q", "-n",
		"-t", "5", "-T", "1", "-s", script, "-O", "mtu", "-O", "search", "-O", "hostname", "-O", "staticroutes"}
	w.Guest.Run(t, "env", append(args, extra...)...)
	data, err := os.ReadFile(lease)
	if err != nil {
		t.Fatalf("no lease: %v", err)
	}
	w.Lease = map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			w.Lease[k] = v
		}
	}
}

func needBusybox(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("needs busybox (Debian package busybox-static)")
	}
}

// waitFor polls cond until it holds; it fails the test after 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	waitLong(t, what, 10*time.Second, cond)
}

// waitLong polls cond until it holds; it fails the test after d.
func waitLong(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	if !pollUntil(d, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// pollUntil polls cond until it holds or d has passed, and tells which.
func pollUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// ServerPid is the process that serves the guest and holds its flows:
// for gopasst, the sandboxed engine that w.Proc (its helper) started; for
// a backend that runs as one process, w.Proc itself.
func (w *World) ServerPid(t testing.TB) int {
	t.Helper()
	pid := w.Proc.Process.Pid
	if !w.gopasst {
		return pid
	}
	// The engine is set up once it is under seccomp, its last step.
	waitFor(t, "gopasst's engine", func() bool {
		kids := childPids(w.Proc.Process.Pid)
		if len(kids) != 1 {
			return false
		}
		pid = kids[0]
		status, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		return strings.Contains(string(status), "\nSeccomp:\t2\n")
	})
	return pid
}

// Pids is w.Proc and every process under it: what a backend costs.
func (w *World) Pids() []int {
	all := []int{w.Proc.Process.Pid}
	for i := 0; i < len(all); i++ {
		all = append(all, childPids(all[i])...)
	}
	return all
}

// childPids lists the children of pid, from /proc/*/stat.
func childPids(pid int) []int {
	var kids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(data)
		f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			kids = append(kids, p)
		}
	}
	return kids
}

func (w *World) start(t testing.TB) {
	t.Helper()
	w.Proc = w.Host.Cmd(w.argv[0], w.argv[1:]...)
	w.Proc.Stdout, w.Proc.Stderr = w.Log, w.Log
	if err := w.Proc.Start(); err != nil {
		t.Fatal(err)
	}
}

// Restart kills the backend as a crash would (SIGKILL; gopasst's engine
// follows its helper) and starts it again on the same socket.
func (w *World) Restart(t testing.TB) {
	t.Helper()
	server := w.ServerPid(t)
	w.Proc.Process.Kill()
	w.Proc.Wait()
	waitFor(t, "the backend to exit", func() bool { return syscall.Kill(server, 0) != nil })
	w.start(t)
}
