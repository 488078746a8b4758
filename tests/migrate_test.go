package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
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

// passtRepairPath is upstream's passt-repair, built (once, into the test
// cache) from the tarball in ../shared/peers beside passt.
func passtRepairPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PASST"); p != "" {
		return filepath.Join(filepath.Dir(p), "passt-repair")
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
	return filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "passt-repair")
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
// holds a TCP connection to a host server with data queued both ways:
// the server stops reading and writing halfway and carries on once the
// migration is over. With a repair helper (upstream passt-repair, or
// gopasst repair) both streams end whole (SHA-256); without one the
// guest's connection is reset, not left hanging. Either way the guest
// then opens a new connection, gets a DHCP lease again and resolves a
// name through the destination, and the source, given --migrate-exit,
// exits.
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
			testQEMUMigrate(t, argv, nil, nil)
		})
	}
}

// TestQEMUMigratePasst is TestQEMUMigrate between upstream passt and
// gopasst, either way: each reads the other's stream; gopasst repair
// serves passt too.
func TestQEMUMigratePasst(t *testing.T) {
	passt := []string{filepath.Join(filepath.Dir(passtRepairPath(t)), "passt"), "-f", "--vhost-user", "-s", "{sock}"}
	t.Run("from passt", func(t *testing.T) {
		testQEMUMigrate(t, []string{gopasstBin, "repair"}, append(passt, "--migrate-exit", "--migrate-no-linger"), nil)
	})
	t.Run("to passt", func(t *testing.T) {
		testQEMUMigrate(t, []string{gopasstBin, "repair"}, nil, passt)
	})
}

// testQEMUMigrate migrates from gopasst (or the backend srcArgv) to
// gopasst (or dstArgv), with the repair helper repairArgv (nil: none).
func testQEMUMigrate(t *testing.T, repairArgv, srcArgv, dstArgv []string) {
	qemu, kernel, kver := needQEMU(t)
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--vhost-user", "--migrate-exit", "--migrate-no-linger", "--debug"}, Backend: srcArgv})
	w.VhostUser = true
	if dstArgv != nil {
		// The destination's QEMU takes only what its back-end offers:
		// the guest keeps to passt's features (gopasst offers more).
		w.Device = "csum=off,guest_csum=off,host_tso4=off,host_tso6=off,guest_tso4=off,guest_tso6=off"
	}
	dst := *w
	dst.Sock = filepath.Join(w.Dir, "dst.socket")
	dstLog := &syncBuffer{}
	if dstArgv == nil {
		dstArgv = []string{gopasstBin, "-f", "-s", "{sock}", "--vhost-user", "--debug"}
	}
	dstArgv = slices.Clone(dstArgv)
	for i, a := range dstArgv {
		dstArgv[i] = strings.ReplaceAll(a, "{sock}", dst.Sock)
	}
	dstProc := w.Host.Cmd(dstArgv[0], dstArgv[1:]...)
	dstProc.Stdout, dstProc.Stderr = dstLog, dstLog
	if err := dstProc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dstProc.Process.Signal(os.Interrupt)
		dstProc.Wait()
		if t.Failed() {
			t.Logf("destination gopasst log:\n%s", dstLog.String())
		}
	})
	waitFor(t, "the destination's socket", func() bool { _, err := os.Stat(dst.Sock); return err == nil })
	if repairArgv != nil {
		for _, sock := range []string{w.Sock, dst.Sock} {
			waitFor(t, sock+".repair listening", func() bool { return listening(w.Host, sock+".repair") })
			h := exec.Command(repairArgv[0], append(repairArgv[1:], sock+".repair")...)
			var out syncBuffer
			h.Stdout, h.Stderr = &out, &out
			if err := h.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				h.Process.Kill()
				h.Wait()
				if t.Failed() {
					t.Logf("%s: %s", repairArgv[0], out.String())
				}
			})
		}
		waitFor(t, "the repair helpers", func() bool {
			return strings.Contains(w.Log.String(), "TCP_REPAIR helper") &&
				strings.Contains(dstLog.String(), "TCP_REPAIR helper")
		})
	}

	// The connection that moves. The server takes the guest's upload
	// into a receive buffer that holds it all, unread, and sends half of
	// the download; both wait for the migration to be over. Its window
	// stays open, so it has nothing to send while the connection moves:
	// on one host, a segment that arrived between the source's close and
	// the destination's connect would be answered with a reset by the
	// kernel. (The unit tests move sockets with data queued in them.)
	const upSize, downSize = 2 << 20, 4 << 20
	upload := bytes.Repeat([]byte("gopasst\n"), upSize/8)
	migrated := make(chan struct{})
	halfway := make(chan struct{})
	var upSum []byte
	served := make(chan struct{})
	var l net.Listener
	var err error
	w.Host.Do(t, func() {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4*upSize) })
		}}
		l, err = lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		defer close(served)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		down := newStream(5, downSize)
		io.CopyN(c, down, downSize/2)
		// Halfway is when the download's first half has left the
		// server's send queue and the whole upload is in its receive
		// queue: then neither end has a segment to send.
		raw, _ := c.(*net.TCPConn).SyscallConn()
		for quiet := false; !quiet; time.Sleep(10 * time.Millisecond) {
			raw.Control(func(fd uintptr) {
				out, _ := unix.IoctlGetUint32(int(fd), unix.SIOCOUTQ)
				in, _ := unix.IoctlGetUint32(int(fd), unix.SIOCINQ)
				quiet = out == 0 && in >= upSize
			})
		}
		close(halfway)
		<-migrated
		done := make(chan struct{})
		go func() {
			h := sha256.New()
			io.CopyN(h, c, upSize)
			upSum = h.Sum(nil)
			close(done)
		}()
		io.Copy(c, down)
		<-done
	}()
	startDNS(t, w, "migrated.gopasst.example", [4]byte{203, 0, 113, 9})
	after := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(after, func(c net.Conn) { io.WriteString(c, "after migration\n"); c.Close() })

	script := fmt.Sprintf(guestDHCPScript+`ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /etc/dhcp.sh
echo "GOPASST-DOWN $(yes gopasst | head -c %[3]d | nc %[1]s %[2]s | sha256sum)"
echo "GOPASST-AFTER $(nc %[1]s %[4]s)"
TAG=RENEWED udhcpc -i eth0 -f -q -n -t 5 -T 2 -s /etc/dhcp.sh 2>&1 | grep -v '^udhcpc'
nslookup migrated.gopasst.example %[1]s | sed 's/^/GOPASST-DNS /'
echo GOPASST-DONE
`, hostGW, port(l.Addr()), upSize, port(after.Addr()))
	initrd := filepath.Join(w.Dir, "initrd.cpio")
	if err := buildInitramfs(initrd, kver, script, nil); err != nil {
		t.Fatal(err)
	}
	incoming := freePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	report := &guestReport{keys: map[string][]string{}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("QEMU consoles:\n%s", report.console())
		}
	})
	src := startQEMU(ctx, t, qemu, kernel, initrd, w, filepath.Join(w.Dir, "src.qmp"), "", report)
	dstQEMU := startQEMU(ctx, t, qemu, kernel, initrd, &dst, filepath.Join(w.Dir, "dst.qmp"), "tcp:127.0.0.1:"+incoming, report)

	select {
	case <-halfway:
	case <-ctx.Done():
		t.Fatalf("the guest never got halfway; console:\n%s", report.console())
	}
	qmp := dialQMP(t, filepath.Join(w.Dir, "src.qmp"))
	qmp.call(t, "migrate", map[string]any{"uri": "tcp:127.0.0.1:" + incoming})
	for {
		r := qmp.call(t, "query-migrate", nil)
		status, _ := r["status"].(string)
		if status == "completed" {
			break
		}
		if status == "failed" || status == "cancelled" {
			t.Fatalf("migration %s: %v; source gopasst:\n%s", status, r, w.Log.String())
		}
		if ctx.Err() != nil {
			t.Fatalf("migration still %s", status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The source is done sending; the destination runs the guest once
	// it has loaded everything, gopasst's state too: only then may the
	// server carry on (before, its segments would find no socket).
	dstQMP := dialQMP(t, filepath.Join(w.Dir, "dst.qmp"))
	for {
		if r := dstQMP.call(t, "query-status", nil); r["status"] == "running" {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the destination never ran the guest")
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(migrated)
	qmp.call(t, "quit", nil)
	src.Wait()
	if err := dstQEMU.Wait(); err != nil && ctx.Err() != nil {
		t.Fatalf("destination QEMU: %v; console:\n%s", err, report.console())
	}
	<-served
	if len(report.get("DONE")) == 0 {
		t.Fatalf("the guest did not finish; console:\n%s", report.console())
	}
	wantDown := hex.EncodeToString(sumStream(5, downSize))
	gotDown := strings.Join(report.get("DOWN"), "")
	upOK := bytes.Equal(upSum, sha256sum(upload))
	if repairArgv != nil {
		if !strings.HasPrefix(gotDown, wantDown) {
			t.Errorf("download to the guest: sha256 %q, want %s", gotDown, wantDown)
		}
		if !upOK {
			t.Errorf("upload from the guest: sha256 %x, want %x", upSum, sha256sum(upload))
		}
	} else if strings.HasPrefix(gotDown, wantDown) {
		// (The upload was all with the server before the migration.)
		t.Errorf("without a repair helper the download carried on: %q", gotDown)
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
	for _, line := range strings.Split(dstLog.String(), "\n") {
		if strings.Contains(line, "migration") {
			t.Log("destination: " + line)
		}
	}
	waitFor(t, "the source to exit (--migrate-exit)", func() bool { return w.Proc.ProcessState != nil || !alive(w.Proc.Process.Pid) })
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

// startQEMU starts a guest on w's socket with a QMP socket, waiting for
// a migration on incoming if given.
func startQEMU(ctx context.Context, t *testing.T, qemu, kernel, initrd string, w *World, qmp, incoming string, r *guestReport) *exec.Cmd {
	args := []string{"-accel", "tcg", "-cpu", "max", "-m", "256",
		"-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio",
		"-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet",
		"-qmp", "unix:" + qmp + ",server=on,wait=off"}
	args = append(args, qemuNetArgs(w, 256)...)
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
	c  net.Conn
	rd *bufio.Reader
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
	q := &qmpConn{c: c, rd: bufio.NewReader(c)}
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
		if json.Unmarshal(line, &m) != nil || m["event"] != nil {
			continue
		}
		if e, ok := m["error"]; ok {
			t.Fatalf("QMP %s: %v", cmd, e)
		}
		r, _ := m["return"].(map[string]any)
		return r
	}
}
