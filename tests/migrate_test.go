package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
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

	"github.com/gopasst/gopasst/pkg/tcprepair"
	"golang.org/x/sys/unix"
)

// passtRepairPath is upstream's passt-repair, beside upstreamPasst.
func passtRepairPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(filepath.Dir(upstreamPasst(t)), "passt-repair")
}

// upstreamPasst is upstream passt 2026.03: $PASST, or built (once, into
// the test cache) from the tarball in ../shared/peers.
func upstreamPasst(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PASST"); p != "" {
		return p
	}
	script, _ := filepath.Abs("../../shared/peers/build-passt.sh")
	if _, err := os.Stat(script); err != nil {
		t.Skipf("no upstream passt to build: %v", err)
	}
	cache, _ := filepath.Abs(".cache/passt")
	out, err := exec.Command(script, cache).Output()
	if err != nil {
		t.Fatalf("building upstream passt: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestRepairHelper moves one end of a TCP connection, with data queued
// both ways, through each repair helper over passt's protocol: upstream's
// passt-repair, unchanged, and gopasst repair; each given the socket, or
// a directory to watch for it as KubeVirt does. The test is the back-end:
// it listens on the repair socket, passes the sockets and reads and
// restores them with pkg/tcprepair. Both streams arrive whole, once, in
// order (SHA-256).
func TestRepairHelper(t *testing.T) {
	needRoot(t)
	for _, helper := range []string{"gopasst", "passt-repair"} {
		for _, dirMode := range []bool{false, true} {
			name := helper + "/socket"
			if dirMode {
				name = helper + "/directory"
			}
			t.Run(name, func(t *testing.T) {
				argv := []string{gopasstBin, "repair"}
				if helper == "passt-repair" {
					argv = []string{passtRepairPath(t)}
				}
				repairThroughHelper(t, argv, dirMode)
			})
		}
	}
}

func repairThroughHelper(t *testing.T, argv []string, dirMode bool) {
	dir := sharedDir(t)
	path := filepath.Join(dir, "gopasst.socket.repair")
	var stderr bytes.Buffer
	var helper *exec.Cmd
	start := func(arg string) {
		helper = exec.Command(argv[0], append(argv[1:], arg)...)
		helper.Stderr = &stderr
		if err := helper.Start(); err != nil {
			t.Fatal(err)
		}
	}
	if dirMode {
		start(dir)
		waitInotifyWatch(t, helper.Process.Pid)
	}
	l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(l)
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Listen(l, 1)
	if !dirMode {
		start(path)
	}
	cfd, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	client := tcprepair.NewClient(cfd)
	set := func(cmd int8, fd int) {
		t.Helper()
		if err := client.Set(cmd, []int{fd}); err != nil {
			t.Fatalf("%v (helper: %s)", err, stderr.String())
		}
	}

	ns := newNetns(t, "repair")
	var a, b int
	var aAddr, bAddr unix.Sockaddr
	ns.Do(t, func() {
		ln, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		defer unix.Close(ln)
		unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
		unix.Listen(ln, 1)
		bAddr, _ = unix.Getsockname(ln)
		a, _ = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err = unix.Connect(a, bAddr); err == nil {
			aAddr, _ = unix.Getsockname(a)
			b, _, err = unix.Accept4(ln, unix.SOCK_CLOEXEC)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(b)
	ab, _ := io.ReadAll(newStream(1, 8<<20))
	ba, _ := io.ReadAll(newStream(2, 8<<20))
	abSent, baSent := pushSome(a, ab), pushSome(b, ba)

	set(tcprepair.On, a)
	// Once it has answered, gopasst repair serves under its filter.
	if argv[0] == gopasstBin {
		st := procStatus(t, strconv.Itoa(helper.Process.Pid))
		if st["Seccomp"] != "2" || st["NoNewPrivs"] != "1" {
			t.Errorf("gopasst repair: Seccomp %q, NoNewPrivs %q, want 2 and 1", st["Seccomp"], st["NoNewPrivs"])
		}
	}
	st, err := tcprepair.Dump(a)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(a)
	var a2 int
	ns.Do(t, func() { a2, err = tcprepair.NewSocket(unix.AF_INET) })
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(a2)
	set(tcprepair.On, a2)
	if err := tcprepair.Restore(a2, st, aAddr, bAddr); err != nil {
		t.Fatal(err)
	}
	set(tcprepair.Off, a2)
	rest, err := tcprepair.Resume(a2, st)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("moved with %d bytes queued to send (%d of them unsent), %d received unread; %d of %d and %d of %d bytes sent before",
		len(st.SendQ), st.NotSent, len(st.RecvQ), abSent, len(ab), baSent, len(ba))
	client.Close()
	if err := helper.Wait(); err != nil {
		t.Errorf("helper: %v: %s", err, stderr.String())
	}

	unix.SetNonblock(a2, false)
	errc := make(chan error, 4)
	go func() { errc <- writeAll(a2, append(rest, ab[abSent:]...), true) }()
	go func() { errc <- writeAll(b, ba[baSent:], true) }()
	got := make([][32]byte, 2)
	go func() { var e error; got[0], e = readHash(b); errc <- e }()
	go func() { var e error; got[1], e = readHash(a2); errc <- e }()
	for range 4 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if got[0] != sha256.Sum256(ab) {
		t.Error("a to b: the stream differs")
	}
	if got[1] != sha256.Sum256(ba) {
		t.Error("b to a: the stream differs")
	}
}

// waitInotifyWatch waits until process pid watches a directory with
// inotify: before that, a socket made there would go unseen.
func waitInotifyWatch(t *testing.T, pid int) {
	t.Helper()
	fdinfo := filepath.Join("/proc", strconv.Itoa(pid), "fdinfo")
	for range 20000 {
		ents, _ := os.ReadDir(fdinfo)
		for _, e := range ents {
			if b, _ := os.ReadFile(filepath.Join(fdinfo, e.Name())); strings.Contains(string(b), "inotify wd:") {
				return
			}
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	t.Fatal("the helper never watched the directory")
}

// pushSome writes from data on fd without blocking until the kernel
// takes no more, and returns how much it took.
func pushSome(fd int, data []byte) int {
	sent := 0
	for sent < len(data) {
		n, err := unix.SendmsgN(fd, data[sent:min(sent+64<<10, len(data))], nil, nil, unix.MSG_DONTWAIT)
		if err != nil {
			break
		}
		sent += n
	}
	return sent
}

// writeAll writes data on the blocking socket fd, then shuts it down
// for writing if fin.
func writeAll(fd int, data []byte, fin bool) error {
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if err != nil && err != unix.EINTR {
			return err
		}
		data = data[max(n, 0):]
	}
	if fin {
		return unix.Shutdown(fd, unix.SHUT_WR)
	}
	return nil
}

// readHash reads the blocking socket fd to EOF and returns the SHA-256
// of what came.
func readHash(fd int) ([32]byte, error) {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return [32]byte{}, err
		}
		if n == 0 {
			return [32]byte(h.Sum(nil)), nil
		}
		h.Write(buf[:n])
	}
}

// TestQEMUMigrate migrates a running guest between two QEMU processes
// (TCG, -incoming over loopback, started over QMP), each on its own
// gopasst over vhost-user, in the same host namespace, while the guest
// holds two TCP connections with data queued both ways: one it opened
// to a host server, and one a host client opened to the guest's server
// through -t. The host ends stop reading and writing halfway and carry
// on once the migration is over. With a repair helper (upstream
// passt-repair, or gopasst repair) all four streams end whole (SHA-256);
// without one the guest's connections are reset, not left hanging.
// Either way the guest then opens a new connection, takes a new one
// through -t (the destination bound the forwards the source let go of),
// gets a DHCP lease again and resolves a name through the destination,
// and the source, given --migrate-exit, exits.
func TestQEMUMigrate(t *testing.T) {
	for _, helper := range []string{"gopasst", "passt-repair", "none"} {
		t.Run(helper, func(t *testing.T) {
			var argv []string
			switch helper {
			case "gopasst":
				argv = []string{gopasstBin, "repair"}
			case "passt-repair":
				argv = []string{passtRepairPath(t)}
			}
			testQEMUMigrate(t, migrateOpts{repair: argv})
		})
	}
}

// TestQEMUMigrateTwice is TestQEMUMigrate there and back: A to B, then
// B to a new gopasst at A's socket, which holds its forwards (B has
// them) until the guest's state comes; the connections survive both.
func TestQEMUMigrateTwice(t *testing.T) {
	testQEMUMigrate(t, migrateOpts{repair: []string{gopasstBin, "repair"}, twice: true})
}

// TestQEMUMigratePasst is TestQEMUMigrate between upstream passt and
// gopasst, either way: each reads the other's stream; gopasst repair
// serves passt too. The inbound connection moves either way (passt
// writes it host side first); passt as the destination exits on a port
// its source has, so it forwards another for the new connection.
func TestQEMUMigratePasst(t *testing.T) {
	passt := []string{filepath.Join(filepath.Dir(passtRepairPath(t)), "passt"), "-f", "--debug", "--vhost-user", "-s", "{sock}"}
	t.Run("from passt", func(t *testing.T) {
		testQEMUMigrate(t, migrateOpts{repair: []string{gopasstBin, "repair"}, src: append(passt, "--migrate-exit", "--migrate-no-linger")})
	})
	t.Run("to passt", func(t *testing.T) {
		testQEMUMigrate(t, migrateOpts{repair: []string{gopasstBin, "repair"}, dst: passt})
	})
}

// migrateOpts says what testQEMUMigrate moves between.
type migrateOpts struct {
	repair   []string // the repair helpers' argv; nil: none
	src, dst []string // passt instead of gopasst, with "{sock}"
	twice    bool     // and back, to a new gopasst at the source's socket
}

// migrateForwards are the source's and every gopasst destination's: the
// connection that moves, and one made after.
var migrateForwards = []string{"-t", "18080:8080", "-t", "18081:8081"}

// startBackend starts argv ("{sock}": sock) in w's host namespace, logging
// to the buffer it returns, and waits for it to listen on sock.
func startBackend(t *testing.T, w *World, sock string, argv []string) (*exec.Cmd, *syncBuffer) {
	log := &syncBuffer{}
	argv = slices.Clone(argv)
	for i, a := range argv {
		argv[i] = strings.ReplaceAll(a, "{sock}", sock)
	}
	p := w.Host.Cmd(argv[0], argv[1:]...)
	p.Stdout, p.Stderr = log, log
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Process.Signal(os.Interrupt)
		p.Wait()
		if t.Failed() {
			t.Logf("%s at %s, log:\n%s", argv[0], sock, log.String())
		}
	})
	waitFor(t, sock, func() bool { return listening(w.Host, sock) })
	return p, log
}

// startRepair connects the repair helper argv to the back-end at sock,
// whose log says when it took it.
func startRepair(t *testing.T, w *World, argv []string, sock string, log *syncBuffer) {
	waitFor(t, sock+".repair listening", func() bool { return listening(w.Host, sock+".repair") })
	h := exec.Command(argv[0], append(argv[1:], sock+".repair")...)
	var out syncBuffer
	h.Stdout, h.Stderr = &out, &out
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Process.Kill()
		h.Wait()
		if t.Failed() {
			t.Logf("%s: %s", argv[0], out.String())
		}
	})
	waitFor(t, "the repair helper at "+sock, func() bool { return strings.Contains(log.String(), "TCP_REPAIR helper") })
}

// rcvBufForce gives a socket room for a whole upload, unread.
func rcvBufForce(n int) func(_, _ string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n) })
	}
}

// carryAcross is the host's end c of a connection that moves: it sends
// the first half of the download (seed, downSize), and once that has
// left its send queue and the guest's whole upload of upSize bytes is in
// its receive queue, unread, and acknowledged, says so (halfway): then
// neither end has a segment to send, and on one host a segment sent
// between the source's close and the destination's connect would be
// answered with a reset by the kernel. Once migrated, it sends the rest,
// calls beforeFIN (if not nil), and returns the upload's SHA-256 (of
// what came, if the connection ended early).
func carryAcross(c net.Conn, seed byte, upSize, downSize int64, halfway chan<- struct{}, migrated <-chan struct{}, beforeFIN func(net.Conn)) []byte {
	defer c.Close()
	down := newStream(seed, downSize)
	io.CopyN(c, down, downSize/2)
	raw, _ := c.(*net.TCPConn).SyscallConn()
	for quiet := false; !quiet; time.Sleep(10 * time.Millisecond) {
		raw.Control(func(fd uintptr) {
			// An ACK the kernel delays would go out later, maybe
			// in between: quick ACKs send it now.
			unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1)
			out, _ := unix.IoctlGetUint32(int(fd), unix.SIOCOUTQ)
			in, _ := unix.IoctlGetUint32(int(fd), unix.SIOCINQ)
			quiet = out == 0 && int64(in) >= upSize
		})
	}
	close(halfway)
	<-migrated
	sum := make(chan []byte)
	go func() {
		h := sha256.New()
		io.CopyN(h, c, upSize)
		sum <- h.Sum(nil)
	}()
	io.Copy(c, down)
	if beforeFIN != nil {
		beforeFIN(c)
	}
	return <-sum
}

// testQEMUMigrate migrates as o says. A gopasst destination holds its
// forwards at start (the source has them).
func testQEMUMigrate(t *testing.T, o migrateOpts) {
	qemu, kernel, kver := needQEMU(t)
	srcArgv := o.src
	if srcArgv != nil {
		srcArgv = append(slices.Clone(srcArgv), migrateForwards...)
	}
	w := newWorld(t, WorldOpts{NoGuest: true, Backend: srcArgv,
		Args: append([]string{"--vhost-user", "--migrate-exit", "--migrate-no-linger", "--debug"}, migrateForwards...)})
	w.VhostUser = true
	dstArgv, probe := o.dst, "18081"
	if dstArgv != nil {
		// The destination's QEMU takes only what its back-end offers:
		// the guest keeps to passt's features (gopasst offers more).
		w.Device = "csum=off,guest_csum=off,host_tso4=off,host_tso6=off,guest_tso4=off,guest_tso6=off"
		dstArgv, probe = append(slices.Clone(dstArgv), "-t", "28081:8081"), "28081"
	} else {
		dstArgv = append([]string{gopasstBin, "-f", "-s", "{sock}", "--vhost-user", "--debug"}, migrateForwards...)
	}
	// The source's forwards first: a destination that took them would
	// hold the source's, which then exits at the guest's first frame.
	waitFor(t, "the source's forwards", func() bool { return tcpListens(w.Host, "18080") && tcpListens(w.Host, "18081") })
	dst := *w
	dst.Sock = filepath.Join(w.Dir, "dst.socket")
	_, dstLog := startBackend(t, w, dst.Sock, dstArgv)
	if o.repair != nil {
		startRepair(t, w, o.repair, w.Sock, w.Log)
		startRepair(t, w, o.repair, dst.Sock, dstLog)
	}

	// Upstream passt, as the destination, resets a connection whose
	// host end closes while the guest has no RX buffer free for the FIN
	// (tcp_vu_data_from_sock), and the reset finds none either: the
	// guest's end waits for ever. So before it closes, the host's end
	// waits for passt's socket to hold nothing the guest has not
	// acknowledged, and then a moment, for the guest to give its
	// buffers back. (gopasst queues the FIN, or sends it again.)
	var beforeFIN func(net.Conn)
	if o.dst != nil {
		beforeFIN = func(c net.Conn) {
			local, remote := port(c.RemoteAddr()), port(c.LocalAddr())
			pollUntil(time.Minute, func() bool { return tcpRecvQ(w.Host, local, remote) <= 0 })
			time.Sleep(200 * time.Millisecond)
		}
	}
	const upSize, downSize = 2 << 20, 4 << 20
	upload := bytes.Repeat([]byte("gopasst\n"), upSize/8)
	migrated := make(chan struct{})
	var sums [2][]byte // the uploads the host ends got: the guest's connection's, the inbound one's
	halfway := [2]chan struct{}{make(chan struct{}), make(chan struct{})}
	served := [2]chan struct{}{make(chan struct{}), make(chan struct{})}
	var l net.Listener
	var err error
	w.Host.Do(t, func() {
		lc := net.ListenConfig{Control: rcvBufForce(4 * upSize)}
		l, err = lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		defer close(served[0])
		if c, err := l.Accept(); err == nil {
			sums[0] = carryAcross(c, 5, upSize, downSize, halfway[0], migrated, beforeFIN)
		}
	}()
	startDNS(t, w, "migrated.gopasst.example", [4]byte{203, 0, 113, 9})
	after := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(after, func(c net.Conn) { io.WriteString(c, "after migration\n"); c.Close() })

	// The inbound connection's guest end runs beside the other, its
	// upload "gopasst" too, and its download's hash in /tmp/in.
	script := fmt.Sprintf(guestDHCPScript+`ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /etc/dhcp.sh
{ yes gopasst | head -c %[3]d | nc -l -p 8080 | sha256sum > /tmp/in; } &
listening t 8080
echo GOPASST-LISTENING
echo "GOPASST-DOWN $(yes gopasst | head -c %[3]d | nc %[1]s %[2]s | sha256sum)"
while [ ! -s /tmp/in ]; do sleep 0.1; done
echo "GOPASST-INDOWN $(cat /tmp/in)"
echo hello-from-guest | nc -l -p 8081
echo "GOPASST-AFTER $(nc %[1]s %[4]s)"
TAG=RENEWED udhcpc -i eth0 -f -q -n -t 5 -T 2 -s /etc/dhcp.sh 2>&1 | grep -v '^udhcpc'
nslookup migrated.gopasst.example %[1]s | sed 's/^/GOPASST-DNS /'
echo GOPASST-DONE
`, hostGW, port(l.Addr()), upSize, port(after.Addr()))
	q := startMigration(t, w, &dst, qemu, kernel, kver, script, nil, 4*time.Minute, func() string { return "" })
	ctx, report, last := q.ctx, q.report, q.dst

	waitLong(t, "the guest's server", 3*time.Minute, func() bool { return len(report.get("LISTENING")) > 0 })
	var c net.Conn
	w.Host.Do(t, func() {
		d := net.Dialer{Control: rcvBufForce(4 * upSize)}
		c, err = d.DialContext(ctx, "tcp", "127.0.0.1:18080")
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(served[1])
		sums[1] = carryAcross(c, 6, upSize, downSize, halfway[1], migrated, beforeFIN)
	}()
	for _, h := range halfway {
		select {
		case <-h:
		case <-ctx.Done():
			t.Fatalf("the guest never got halfway; console:\n%s", report.console())
		}
	}
	migrateGuest(ctx, t, q.srcQMP, q.dstQMP, q.incoming, w.Log)
	finalLog := dstLog
	if o.twice {
		// Back to A's socket, once A is gone: a new gopasst there, with
		// A's forwards, which B holds.
		waitFor(t, "the source to exit (--migrate-exit)", func() bool { return !alive(w.Proc.Process.Pid) })
		_, finalLog = startBackend(t, w, w.Sock, dstArgv)
		startRepair(t, w, o.repair, w.Sock, finalLog)
		incoming := freePort(t)
		backQMP := filepath.Join(w.Dir, "back.qmp")
		last = startQEMU(ctx, t, qemu, kernel, q.initrd, w, backQMP, "tcp:127.0.0.1:"+incoming, report)
		migrateGuest(ctx, t, q.dstQMP, backQMP, incoming, dstLog)
	}
	close(migrated)
	// A new connection through -t reaches the guest from the
	// destination, once the guest listens again.
	var got string
	for got != "hello-from-guest\n" && ctx.Err() == nil {
		if c, err := w.Host.Dial("tcp", "127.0.0.1:"+probe, 10*time.Second); err == nil {
			c.SetDeadline(time.Now().Add(30 * time.Second))
			b, _ := io.ReadAll(c)
			c.Close()
			got = string(b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got != "hello-from-guest\n" {
		t.Errorf("a new connection through -t to the destination got %q", got)
	}
	if err := last.Wait(); err != nil && ctx.Err() != nil {
		t.Fatalf("destination QEMU: %v; console:\n%s", err, report.console())
	}
	<-served[0]
	<-served[1]
	if len(report.get("DONE")) == 0 {
		t.Fatalf("the guest did not finish; console:\n%s", report.console())
	}
	type moved struct {
		name, key string
		seed      byte
		up        []byte
	}
	for _, m := range []moved{{"the guest's connection", "DOWN", 5, sums[0]}, {"the inbound connection", "INDOWN", 6, sums[1]}} {
		wantDown := hex.EncodeToString(sumStream(m.seed, downSize))
		gotDown := strings.Join(report.get(m.key), "")
		upOK := bytes.Equal(m.up, sha256sum(upload))
		if o.repair != nil {
			if !strings.HasPrefix(gotDown, wantDown) {
				t.Errorf("%s, to the guest: sha256 %q, want %s", m.name, gotDown, wantDown)
			}
			if !upOK {
				t.Errorf("%s, from the guest: sha256 %x, want %x", m.name, m.up, sha256sum(upload))
			}
		} else if strings.HasPrefix(gotDown, wantDown) {
			// (The upload was all with the host before the migration.)
			t.Errorf("without a repair helper %s carried on: %q", m.name, gotDown)
		}
	}
	if got := strings.Join(report.get("AFTER"), ""); got != "after migration" {
		t.Errorf("a new connection from the destination got %q", got)
	}
	if lease := strings.Join(report.get("RENEWEDLEASE"), ""); !strings.Contains(lease, "ip="+hostAddr) {
		t.Errorf("DHCP from the destination: lease %q", lease)
	}
	if dns := strings.Join(report.get("DNS"), "\n"); !strings.Contains(dns, "203.0.113.9") {
		t.Errorf("DNS from the destination:\n%s", dns)
	}
	for _, line := range strings.Split(finalLog.String(), "\n") {
		if strings.Contains(line, "migration") || strings.Contains(line, "busy") || strings.Contains(line, "bound again") {
			t.Log("destination: " + line)
		}
	}
	waitFor(t, "the source to exit (--migrate-exit)", func() bool { return w.Proc.ProcessState != nil || !alive(w.Proc.Process.Pid) })
}

// TestQEMUMigrateStream migrates a guest on -netdev stream: QEMU moves
// it without any state of the back-end's, to a QEMU connected to another
// gopasst. That gopasst serves it at once: a new connection works, and
// the guest's DHCP client renews its lease (a unicast request, from the
// address the source's gopasst gave it) and keeps its address. Its
// connections are lost, as with passt.
func TestQEMUMigrateStream(t *testing.T) {
	qemu, kernel, kver := needQEMU(t)
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--debug"}})
	dst := *w
	dst.Sock = filepath.Join(w.Dir, "dst.socket")
	_, dstLog := startBackend(t, w, dst.Sock, []string{gopasstBin, "-f", "-s", "{sock}", "--debug"})
	const afterPort = "17777" // listened on only once the guest has moved
	// The guest holds a connection to held across the move, which is
	// lost, as with passt: the host's end closes with the source, and the
	// guest's next segment, which the destination knows nothing of, is
	// reset.
	held := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	heldEnded := make(chan error, 1)
	acceptLoop(held, func(c net.Conn) {
		_, err := io.Copy(io.Discard, c)
		heldEnded <- err
	})
	// udhcpc stays, to renew its lease when told (SIGUSR1); until the
	// migration is over the guest's connections to afterPort are refused.
	script := guestDHCPScript + `cat > /etc/lease.sh <<'EOS'
#!/bin/sh
case $1 in
bound) /etc/dhcp.sh bound ;;
renew) echo "GOPASST-RENEW ip=$ip"; touch /tmp/renewed ;;
*) echo "GOPASST-DHCP $1" ;;
esac
EOS
chmod +x /etc/lease.sh
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -f -t 10 -T 2 -s /etc/lease.sh &
dhcp=$!
while ! ip -4 addr show eth0 | grep -q inet; do sleep 0.1; done
(while :; do echo held; sleep 0.2; done | nc ` + hostGW + ` ` + port(held.Addr()) + `; echo GOPASST-HELDEND) &
held=$!
echo GOPASST-READY
while [ "$(nc ` + hostGW + ` ` + afterPort + ` 2>/dev/null)" != "after migration" ]; do sleep 0.2; done
for i in $(seq 100); do kill -0 $held 2>/dev/null || break; sleep 0.1; done
echo GOPASST-AFTER after migration
kill -USR1 $dhcp
for i in $(seq 300); do [ -e /tmp/renewed ] && break; sleep 0.1; done
ip -4 addr show eth0 | sed -n 's/^ *inet /GOPASST-ADDR /p'
echo GOPASST-DONE
`
	q := startMigration(t, w, &dst, qemu, kernel, kver, script, nil, 3*time.Minute,
		func() string { return "\ndestination gopasst:\n" + dstLog.String() })
	ctx, report, last := q.ctx, q.report, q.dst
	waitLong(t, "the guest's lease", 2*time.Minute, func() bool { return len(report.get("READY")) > 0 })
	migrateGuest(ctx, t, q.srcQMP, q.dstQMP, q.incoming, w.Log)
	after := w.Host.Listen(t, "tcp", "127.0.0.1:"+afterPort)
	acceptLoop(after, func(c net.Conn) { io.WriteString(c, "after migration\n"); c.Close() })
	if err := last.Wait(); err != nil && ctx.Err() != nil {
		t.Fatalf("destination QEMU: %v", err)
	}
	if len(report.get("DONE")) == 0 {
		t.Fatal("the guest did not finish")
	}
	if len(report.get("AFTER")) == 0 {
		t.Error("no new connection from the destination")
	}
	if len(report.get("HELDEND")) == 0 {
		t.Error("the connection held across the move was not reset for the guest")
	}
	select {
	case <-heldEnded:
	default:
		t.Error("the host's end of the connection held across the move is still open")
	}
	if got := strings.Join(report.get("RENEW"), ""); got != "ip="+hostAddr {
		t.Errorf("the lease renewed at the destination: %q, want ip=%s", got, hostAddr)
	}
	if addr := strings.Join(report.get("ADDR"), ""); !strings.HasPrefix(addr, hostAddr+"/") {
		t.Errorf("the guest's address after the renewal: %q", addr)
	}
	if !strings.Contains(dstLog.String(), "DHCP: type 3, answering 5") {
		t.Errorf("the destination did not acknowledge the renewal:\n%s", dstLog.String())
	}
}

// migration is what migrateGuest measured: QMP's total-time, downtime
// and guest memory sent, and how long the guest was stopped, from the source's STOP
// event to the destination's RESUME (QEMU's downtime ends before the
// destination has loaded and runs the guest).
type migration struct {
	total, downtime, stopped time.Duration
	resume                   time.Time // the destination's RESUME event
	ramSent                  float64   // bytes of guest memory sent
}

// migrateGuest moves the guest from the QEMU at srcQMP to the one waiting
// on incoming at dstQMP, whose guest then runs: only then may the host
// ends carry on (before, their segments would find no socket). The
// source QEMU quits.
func migrateGuest(ctx context.Context, t *testing.T, srcQMP, dstQMP, incoming string, srcLog *syncBuffer) migration {
	waitLong(t, "the destination QEMU to listen", time.Minute, func() bool { return tcpListens(nil, incoming) })
	dst := dialQMP(t, dstQMP)
	defer dst.c.Close() // QEMU serves one QMP client at a time: the next hop's
	qmp := dialQMP(t, srcQMP)
	qmp.call(t, "migrate", map[string]any{"uri": "tcp:127.0.0.1:" + incoming})
	var m migration
	for {
		r := qmp.call(t, "query-migrate", nil)
		status, _ := r["status"].(string)
		if status == "completed" {
			ms := func(k string) time.Duration {
				v, _ := r[k].(float64)
				return time.Duration(v * float64(time.Millisecond))
			}
			m.total, m.downtime = ms("total-time"), ms("downtime")
			ram, _ := r["ram"].(map[string]any)
			m.ramSent, _ = ram["transferred"].(float64)
			break
		}
		if status == "failed" || status == "cancelled" {
			t.Fatalf("migration %s: %v; source back-end:\n%s", status, r, srcLog.String())
		}
		if ctx.Err() != nil {
			t.Fatalf("migration still %s", status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		if s := dst.call(t, "query-status", nil); s["status"] == "running" {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the destination never ran the guest")
		}
		time.Sleep(100 * time.Millisecond)
	}
	m.resume = dst.events["RESUME"]
	m.stopped = m.resume.Sub(qmp.events["STOP"])
	qmp.call(t, "quit", nil)
	return m
}

// tcpListens tells whether a TCP socket listens on port in ns (nil:
// here), from /proc/net/tcp and tcp6: a connection to find out would be
// taken for a client (a migration's, or a forward's).
func tcpListens(ns *Netns, port string) bool {
	p, _ := strconv.Atoi(port)
	for _, f := range procTCP(ns) {
		if len(f) > 3 && f[3] == "0A" && strings.HasSuffix(f[1], fmt.Sprintf(":%04X", p)) {
			return true
		}
	}
	return false
}

// tcpRecvQ is the receive queue of the TCP socket in ns from local to
// remote (ports, as port gives them); -1 if there is none.
func tcpRecvQ(ns *Netns, local, remote string) int {
	l, _ := strconv.Atoi(local)
	r, _ := strconv.Atoi(remote)
	for _, f := range procTCP(ns) {
		if len(f) > 4 && strings.HasSuffix(f[1], fmt.Sprintf(":%04X", l)) && strings.HasSuffix(f[2], fmt.Sprintf(":%04X", r)) {
			_, q, _ := strings.Cut(f[4], ":")
			n, _ := strconv.ParseInt(q, 16, 64)
			return int(n)
		}
	}
	return -1
}

// procTCP is /proc/net/tcp and tcp6 in ns (nil: ours), split into
// fields, a row a socket (and the headings).
func procTCP(ns *Netns) [][]string {
	var rows [][]string
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		var b []byte
		if ns == nil {
			b, _ = os.ReadFile(f)
		} else {
			b, _ = ns.Cmd("cat", f).Output()
		}
		for _, line := range strings.Split(string(b), "\n") {
			rows = append(rows, strings.Fields(line))
		}
	}
	return rows
}

// listening tells whether a unix socket listens at path in ns, from
// /proc/net/unix (flags __SO_ACCEPTCON): connecting to find out would be
// taken for the repair helper.
func listening(ns *Netns, path string) bool {
	out, _ := ns.Cmd("cat", "/proc/net/unix").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 8 && f[7] == path && f[3] == "00010000" {
			return true
		}
	}
	return false
}

func sha256sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// alive tells whether process pid still runs (and is not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(b), ") Z ")
}

// freePort is a TCP port on 127.0.0.1 that nothing listens on now.
func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return port(l.Addr())
}

// guestReport gathers the GOPASST- lines of both QEMU consoles.
type guestReport struct {
	mu   sync.Mutex
	keys map[string][]string
	all  strings.Builder
}

func (r *guestReport) add(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all.WriteString(line + "\n")
	if i := strings.Index(line, "GOPASST-"); i >= 0 {
		k, v, _ := strings.Cut(line[i+len("GOPASST-"):], " ")
		r.keys[k] = append(r.keys[k], v)
	}
}

func (r *guestReport) get(k string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.keys[k]
}

func (r *guestReport) console() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.all.String()
}

// qemuMigration is a migration's two QEMUs: the source booted on one
// World with the guest's script, the destination on another, waiting
// for it (-incoming); both end when the test does, or at its limit.
type qemuMigration struct {
	ctx            context.Context
	report         *guestReport
	srcQMP, dstQMP string
	incoming       string
	dst            *exec.Cmd // the destination QEMU
	initrd         string
}

// startMigration builds the guest's initramfs (script, and files) and
// starts both QEMUs; a failed test logs their consoles, and what
// extraLog adds.
func startMigration(t *testing.T, src, dst *World, qemu, kernel, kver, script string, files map[string]string, limit time.Duration, extraLog func() string) *qemuMigration {
	m := &qemuMigration{report: &guestReport{keys: map[string][]string{}}, incoming: freePort(t),
		srcQMP: filepath.Join(src.Dir, "src.qmp"), dstQMP: filepath.Join(src.Dir, "dst.qmp"), initrd: filepath.Join(src.Dir, "initrd.cpio")}
	if err := buildInitramfs(m.initrd, kver, script, files); err != nil {
		t.Fatal(err)
	}
	var cancel context.CancelFunc
	m.ctx, cancel = context.WithTimeout(context.Background(), limit)
	t.Cleanup(cancel)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("QEMU consoles:\n%s%s", m.report.console(), extraLog())
		}
	})
	startQEMU(m.ctx, t, qemu, kernel, m.initrd, src, m.srcQMP, "", m.report)
	m.dst = startQEMU(m.ctx, t, qemu, kernel, m.initrd, dst, m.dstQMP, "tcp:127.0.0.1:"+m.incoming, m.report)
	return m
}

// startQEMU starts a guest on w's socket with a QMP socket, waiting for
// a migration on incoming if given, with QEMU's extra options.
func startQEMU(ctx context.Context, t *testing.T, qemu, kernel, initrd string, w *World, qmp, incoming string, r *guestReport, extra ...string) *exec.Cmd {
	args := append(qemuArgs(w, kernel, initrd, 256), "-qmp", "unix:"+qmp+",server=on,wait=off")
	args = append(args, extra...)
	if incoming != "" {
		args = append(args, "-incoming", incoming)
	}
	cmd := exec.CommandContext(ctx, qemu, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			r.add(strings.TrimRight(s.Text(), "\r"))
		}
	}()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// qmpConn is a QMP client, one command at a time.
type qmpConn struct {
	c      net.Conn
	rd     *bufio.Reader
	events map[string]time.Time // when each event came last, by QEMU's clock
}

func dialQMP(t *testing.T, path string) *qmpConn {
	t.Helper()
	var c net.Conn
	waitFor(t, "QMP", func() bool {
		var err error
		c, err = net.Dial("unix", path)
		return err == nil
	})
	t.Cleanup(func() { c.Close() })
	q := &qmpConn{c: c, rd: bufio.NewReader(c), events: map[string]time.Time{}}
	q.rd.ReadBytes('\n') // the greeting
	q.call(t, "qmp_capabilities", nil)
	return q
}

// call runs a command and returns its result; events are skipped.
func (q *qmpConn) call(t *testing.T, cmd string, args map[string]any) map[string]any {
	t.Helper()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	q.c.Write(append(b, '\n'))
	for {
		line, err := q.rd.ReadBytes('\n')
		if err != nil {
			if cmd == "quit" {
				return nil
			}
			t.Fatalf("QMP %s: %v", cmd, err)
		}
		var m map[string]any
		if json.Unmarshal(line, &m) != nil {
			continue
		}
		if ev, ok := m["event"].(string); ok {
			var e struct {
				Timestamp struct{ Seconds, Microseconds int64 }
			}
			json.Unmarshal(line, &e)
			q.events[ev] = time.Unix(e.Timestamp.Seconds, e.Timestamp.Microseconds*1000)
			continue
		}
		if e, ok := m["error"]; ok {
			t.Fatalf("QMP %s: %v", cmd, e)
		}
		r, _ := m["return"].(map[string]any)
		return r
	}
}

// TestVhostUserBusyForward: a forwarded port another socket has when a
// --vhost-user gopasst starts (on one host, a migration's source) is
// held, not fatal; a guest that then starts there without a migration
// makes gopasst bind it, and gopasst exits with the error it would have
// given at start. Without --vhost-user the start fails, as ever.
func TestVhostUserBusyForward(t *testing.T) {
	const busy = "127.0.0.1:18412"
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--vhost-user", "-t", "127.0.0.1/18412"},
		BeforeStart: func(host *Netns) { host.Listen(t, "tcp", busy) }})
	waitFor(t, "the forward held", func() bool { return strings.Contains(w.Log.String(), "is busy") })
	out, err := w.Host.Cmd(gopasstBin, "-f", "-s", filepath.Join(w.Dir, "plain.socket"), "-t", "127.0.0.1/18412").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "address already in use") {
		t.Errorf("without --vhost-user a busy port at start: %v\n%s", err, out)
	}
	f := dialVhostUser(t, w.Sock)
	f.setUp()
	f.sendARP()
	waitFor(t, "gopasst to exit at the guest's first frame", func() bool { return !alive(w.Proc.Process.Pid) })
	if !strings.Contains(w.Log.String(), "address already in use") {
		t.Errorf("gopasst's log:\n%s", w.Log.String())
	}
}

// The sandboxed engine waits on the device state's pipe (ppoll, in its
// seccomp list): a destination whose front-end writes the state only
// after a pause loads it; then the engine serves on. A state larger than
// a pipe holds, as 400 idle connections make, meets the same wait.
func TestVhostUserDeviceStateWaits(t *testing.T) {
	const setDeviceStateFd, checkDeviceState, load = 42, 43, 1
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--vhost-user"}})
	f := dialVhostUser(t, w.Sock)
	f.setUp()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	f.send(setDeviceStateFd, binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, load), 0), p[0])
	unix.Close(p[0])
	if r := f.reply(); r != 0x100 {
		t.Fatalf("SET_DEVICE_STATE_FD answered %#x", r)
	}
	time.Sleep(200 * time.Millisecond) // the engine is waiting on the pipe now
	// passt's stream, version 2, with no address seen and no flow.
	state := binary.BigEndian.AppendUint64(nil, 0xB1BB1D1B0BB1D1B0)
	state = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(state, 2), 2)
	state = append(state, make([]byte, 16+16+4+6+4)...)
	unix.Write(p[1], state)
	unix.Close(p[1])
	f.send(checkDeviceState, nil)
	if r := f.reply(); r != 0 {
		t.Fatalf("CHECK_DEVICE_STATE answered %d: the load failed\n%s", r, w.Log.String())
	}
	f.sendARP()
	waitFor(t, "an ARP reply after the load", f.gotARPReply)
}
