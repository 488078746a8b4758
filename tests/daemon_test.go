package tests

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hostArgs give gopasst a guest configuration without a template
// interface, so these tests need no namespace.
var hostArgs = []string{"-a", "192.0.2.2", "-n", "24", "-g", "192.0.2.1", "-D", "none"}

// TestDaemonize runs gopasst as libvirt does: the first process must exit
// 0 only once the socket listens, leave the daemon's PID in --pid, hold
// no inherited output, and the daemon must clean up on SIGTERM.
func TestDaemonize(t *testing.T) {
	dir := t.TempDir()
	sock, pid := filepath.Join(dir, "s"), filepath.Join(dir, "pid")
	cmd := exec.Command(gopasstBin, append([]string{"--one-off", "--socket", sock, "--pid", pid}, hostArgs...)...)
	cmd.Dir = "/"
	// CombinedOutput returns only at EOF on the pipe: a daemon that kept
	// our stdout or stderr would hang this call.
	done := make(chan error, 1)
	var out []byte
	go func() { var err error; out, err = cmd.CombinedOutput(); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("gopasst: %v\n%s", err, out)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the launching process did not exit or the daemon holds its output")
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("socket not there after exit 0: %v", err)
	}
	data, err := os.ReadFile(pid)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if p <= 0 || syscall.Kill(p, 0) != nil {
		t.Fatalf("PID file %q does not name a live process", data)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Close() // --one-off: the daemon exits now
	waitFor(t, "one-off daemon to exit", func() bool { return syscall.Kill(p, 0) != nil })
	expectRemoved(t, sock, pid)
}

// TestDaemonRelativePaths: relative paths name files in the caller's
// directory, as with passt, though the daemon runs in "/": the socket,
// PID file, log, capture and control socket are made there, and those
// gopasst removes at exit are removed from there.
func TestDaemonRelativePaths(t *testing.T) {
	dir := t.TempDir()
	args := []string{"-s", "rel.sock", "--pid", "rel.pid", "-l", "rel.log", "--pcap", "rel.pcap", "--control", "rel.ctl"}
	cmd := exec.Command(gopasstBin, append(args, hostArgs...)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, name := range []string{"rel.sock", "rel.pid", "rel.log", "rel.pcap", "rel.ctl"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Error(err)
		}
	}
	data, _ := os.ReadFile(filepath.Join(dir, "rel.pid"))
	p, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	if p <= 0 {
		t.Fatalf("PID file %q", data)
	}
	syscall.Kill(p, syscall.SIGTERM)
	waitFor(t, "daemon to exit on SIGTERM", func() bool { return syscall.Kill(p, 0) != nil })
	expectRemoved(t, filepath.Join(dir, "rel.sock"), filepath.Join(dir, "rel.pid"), filepath.Join(dir, "rel.ctl"))
}

// TestPastaDaemonRelativePaths: the same for pasta, whose relative
// --pid and --log-file name files in the caller's directory too.
func TestPastaDaemonRelativePaths(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	_, pid, kill := pidNetns(t, h)
	dir := t.TempDir()
	cmd := h.Cmd(pastaLink(t), "-t", "none", "-u", "none", "-T", "none", "-U", "none", "--pid", "rel.pid", "-l", "rel.log", pid)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(dir, "rel.pid"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "rel.log")); err != nil {
		t.Error(err)
	}
	p, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	kill() // pasta exits with the namespace's process
	waitFor(t, "pasta to exit with its namespace", func() bool { return p <= 0 || syscall.Kill(p, 0) != nil })
}

// TestSIGTERM: a daemon stopped by SIGTERM removes its socket and PID file.
func TestSIGTERM(t *testing.T) {
	dir := t.TempDir()
	sock, pid := filepath.Join(dir, "s"), filepath.Join(dir, "pid")
	out, err := exec.Command(gopasstBin, append([]string{"-s", sock, "-P", pid}, hostArgs...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	data, _ := os.ReadFile(pid)
	p, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	syscall.Kill(p, syscall.SIGTERM)
	waitFor(t, "daemon to exit on SIGTERM", func() bool { return syscall.Kill(p, 0) != nil })
	expectRemoved(t, sock, pid)
}

// TestSIGQUIT: gopasst in the foreground takes SIGQUIT as SIGTERM, as
// passt's handler does: it exits 0 and removes its socket.
func TestSIGQUIT(t *testing.T) {
	dir := t.TempDir()
	sock, pid := filepath.Join(dir, "s"), filepath.Join(dir, "pid")
	cmd := exec.Command(gopasstBin, append([]string{"-f", "-s", sock, "-P", pid}, hostArgs...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The PID file is written once the engine serves.
	waitFor(t, "the PID file", func() bool { _, err := os.Stat(pid); return err == nil })
	cmd.Process.Signal(syscall.SIGQUIT)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit on SIGQUIT: %v", err)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("still running 10 s after SIGQUIT")
	}
	expectRemoved(t, sock, pid)
}

// TestPasstDefaultSocket: run as passt without -s, gopasst listens where
// passt would, on the first free /tmp/passt_N.socket, which passt's
// documentation has QEMU connect to; run as gopasst, on gopasst_N.socket
// in the runtime directory.
func TestPasstDefaultSocket(t *testing.T) {
	dir := t.TempDir()
	passt := filepath.Join(dir, "passt")
	if err := os.Symlink(gopasstBin, passt); err != nil {
		t.Fatal(err)
	}
	pid := filepath.Join(dir, "pid")
	for _, c := range []struct{ exe, want string }{{passt, "/tmp/passt_"}, {gopasstBin, dir + "/gopasst_"}} {
		var out syncBuffer
		cmd := exec.Command(c.exe, append([]string{"-f", "-P", pid}, hostArgs...)...)
		cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+dir)
		cmd.Stderr = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var sock string
		waitFor(t, "the socket's path", func() bool {
			_, rest, ok := strings.Cut(out.String(), "UNIX domain socket bound at ")
			sock, _, _ = strings.Cut(rest, "\n")
			return ok && strings.HasSuffix(sock, ".socket")
		})
		// The PID file is written once the engine serves: a signal
		// before gopasst can handle it would leave the socket, as passt's.
		waitFor(t, "the PID file", func() bool { _, err := os.Stat(pid); return err == nil })
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if !strings.HasPrefix(sock, c.want) {
			t.Errorf("%s listened on %s, want %sN.socket", filepath.Base(c.exe), sock, c.want)
		}
		expectRemoved(t, sock, pid)
	}
}

// TestStopDuringSetup: SIGTERM at any moment of start-up ends gopasst,
// as passt's handler, set first thing, ends passt: one that reached the
// engine before it could hear it was lost, and gopasst served on.
func TestStopDuringSetup(t *testing.T) {
	for i := 0; i < 10; i++ {
		sock := filepath.Join(t.TempDir(), "s")
		cmd := exec.Command(gopasstBin, append([]string{"-f", "-s", sock}, hostArgs...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the socket", func() bool { _, err := os.Stat(sock); return err == nil })
		time.Sleep(time.Duration(i) * 5 * time.Millisecond)
		cmd.Process.Signal(syscall.SIGTERM)
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Fatalf("still running 5 s after SIGTERM, %d ms after its socket appeared", i*5)
		}
	}
}

// TestQuiet: with --quiet, as with passt's, starting prints nothing: no
// socket path, no QEMU command line.
func TestQuiet(t *testing.T) {
	dir := t.TempDir()
	sock, pid := filepath.Join(dir, "s"), filepath.Join(dir, "pid")
	out, err := exec.Command(gopasstBin, append([]string{"--quiet", "-s", sock, "-P", pid}, hostArgs...)...).CombinedOutput()
	if err != nil || len(out) != 0 {
		t.Errorf("exit %v, output %q; want exit 0 and no output", err, out)
	}
	data, _ := os.ReadFile(pid)
	p, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	syscall.Kill(p, syscall.SIGTERM)
	waitFor(t, "daemon to exit on SIGTERM", func() bool { return syscall.Kill(p, 0) != nil })
}

// TestSyslogName: a daemon without --log-file logs to syslog under the
// name it runs as, passt's when installed as passt (as libvirt runs it),
// as passt's own messages are found: journalctl -t passt. The daemon
// runs in a mount namespace whose /run holds the test's syslog socket,
// one of the paths log/syslog tries.
func TestSyslogName(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	logSock := filepath.Join(dir, "syslog")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: logSock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.Chmod(dir, 0o755)
	os.Chmod(logSock, 0o666) // the engine logs as nobody
	// Read as a syslog daemon does, from the start: the engine logs its
	// start-up summary a line a message, as passt, more than the socket
	// queues (net.unix.max_dgram_qlen, 10), and waits for room before it
	// is ready.
	first := make(chan string, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := l.Read(buf)
			if err != nil {
				close(first)
				return
			}
			select {
			case first <- string(buf[:n]):
			default:
			}
		}
	}()
	passt := filepath.Join(dir, "passt")
	if err := os.Symlink(gopasstBin, passt); err != nil {
		t.Fatal(err)
	}
	pid := filepath.Join(dir, "pid")
	script := `mount -t tmpfs tmpfs /run && touch /run/syslog && mount --bind "$0" /run/syslog && exec "$@"`
	args := append([]string{"-m", "--propagation", "private", "sh", "-c", script, logSock,
		passt, "-s", filepath.Join(dir, "s"), "-P", pid}, hostArgs...)
	if out, err := exec.Command("unshare", args...).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	defer func() {
		data, _ := os.ReadFile(pid)
		if p, _ := strconv.Atoi(strings.TrimSpace(string(data))); p > 0 {
			syscall.Kill(p, syscall.SIGTERM)
			waitFor(t, "daemon to exit on SIGTERM", func() bool { return syscall.Kill(p, 0) != nil })
		}
	}()
	l.SetReadDeadline(time.Now().Add(10 * time.Second))
	msg, ok := <-first
	if !ok {
		t.Fatal("no syslog message")
	}
	// "<PRI>TIMESTAMP TAG[PID]: MESSAGE"
	if !strings.Contains(msg, " passt[") {
		t.Errorf("syslog message %q, want passt's name", msg)
	}
}

// TestOutputFileModes: the PID file, the log and the capture that
// gopasst creates are their owner's alone (0600), as passt's, whatever
// the umask.
func TestOutputFileModes(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s")
	files := map[string]string{"-P": "pid", "-l": "log", "--pcap": "pcap"}
	args := []string{"-f", "-1", "-s", sock}
	for opt, name := range files {
		args = append(args, opt, filepath.Join(dir, name))
	}
	cmd := exec.Command(gopasstBin, append(args, hostArgs...)...)
	old := syscall.Umask(0)
	err := cmd.Start()
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, "the PID file", func() bool { _, err := os.Stat(filepath.Join(dir, "pid")); return err == nil })
	for _, name := range files {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Error(err)
		} else if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", name, st.Mode())
		}
	}
}

// TestStaleSocket: a socket file nobody listens on (a crashed instance) is
// replaced; a live one is refused with a clear error.
func TestStaleSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(gopasstBin, append([]string{"-f", "-1", "-s", sock}, hostArgs...)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use") {
		t.Fatalf("live socket: err %v, output %s", err, out)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // the file stays: now it is stale
	cmd := exec.Command(gopasstBin, append([]string{"-f", "-1", "-s", sock}, hostArgs...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	waitFor(t, "gopasst on the stale path", func() bool { c, err = net.Dial("unix", sock); return err == nil })
	c.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("one-off exit: %v", err)
	}
}

// TestBadOptions: an invalid option exits non-zero with one line naming it.
func TestBadOptions(t *testing.T) {
	for _, args := range [][]string{{"--bogus"}, {"--mtu", "12"}, {"--vhost-user", "--vsock", "1024"}, {"-a", "nonsense"}, {"-M", "xx"},
		// Forwards passt refuses: of a disabled protocol or family (on
		// loopback: there is no namespace here).
		{"--no-tcp", "-t", "127.0.0.1/18080"}, {"-u", "127.0.0.1/15353", "--no-udp"}, {"-4", "-t", "::1/18080"},
		// Migration options without --vhost-user, as passt.
		{"--repair-path", "r"}, {"--migrate-exit"}, {"--migrate-no-linger"}} {
		// Accepted by mistake, it would serve: stop it, and its socket
		// is in a directory of the test's own.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, gopasstBin, append(append([]string{"-f", "-s", filepath.Join(t.TempDir(), "s")}, hostArgs...), args...)...)
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		out, err := cmd.CombinedOutput()
		cancel()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err == nil || len(lines) != 1 || !strings.HasPrefix(lines[0], "gopasst: ") {
			t.Errorf("%v: err %v, output %q", args, err, out)
		}
	}
	// A daemon's failure reaches its parent's stderr in its own words,
	// once prefixed.
	out, err := exec.Command(gopasstBin, "-s", filepath.Join(t.TempDir(), "s"), "-l", "/nonexistent/dir/log").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "gopasst: --log-file") || strings.Contains(string(out), "gopasst: gopasst:") {
		t.Errorf("a daemon that cannot open its log: err %v, output %q", err, out)
	}
}

// TestFdOption starts gopasst as QEMU 10.1's -netdev passt does
// ("--quiet --pid FILE --fd 3", daemonized, the connected socket on fd 3):
// the launcher exits 0, the daemon serves the socket it was given, and
// exits when QEMU's end closes (--fd implies --one-off).
func TestFdOption(t *testing.T) {
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours := os.NewFile(uintptr(pair[0]), "qemu")
	theirs := os.NewFile(uintptr(pair[1]), "passt")
	pid := filepath.Join(t.TempDir(), "pid")
	cmd := exec.Command(gopasstBin, append([]string{"--quiet", "--pid", pid, "--fd", "3"}, hostArgs...)...)
	cmd.ExtraFiles = []*os.File{theirs}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gopasst: %v\n%s", err, out)
	}
	theirs.Close()
	data, err := os.ReadFile(pid)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	c, err := net.FileConn(ours)
	if err != nil {
		t.Fatal(err)
	}
	ours.Close()
	c.Write(frame(arpRequest()))
	expectARPReply(t, c)
	c.Close()
	waitFor(t, "the daemon to exit when its socket closes", func() bool { return syscall.Kill(p, 0) != nil })
}

// TestKrunaiStartup starts passt as krunai (github.com/slp/krunai,
// src/passt.rs) does: "--fd N --foreground -4 -t PORT:22" with one end
// of a socketpair, standard error piped. krunai takes the guest's
// address, router and mask from the "DHCP:" block passt prints there,
// and fails to start the VM without it: gopasst printed its own summary,
// with timestamps, which krunai could not parse. Where there is an
// upstream passt, its blocks (from "MAC:" on) are gopasst's. (With IPv6
// they differ where the host has only IPv4 resolvers: gopasst gives the
// IPv6 guest a stand-in, as TestDiffGuest's knownDiffs say.)
func TestKrunaiStartup(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	start := func(bin string, args ...string) string {
		pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		theirs := os.NewFile(uintptr(pair[1]), "passt")
		cmd := h.Cmd(bin, append([]string{"--fd", "3", "--foreground"}, args...)...)
		cmd.ExtraFiles = []*os.File{theirs}
		var stderr syncBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		theirs.Close()
		// krunai reads the block while passt serves; here the VM's end
		// closes first, so that passt (--fd implies --one-off) exits and
		// its whole output is read.
		syscall.Close(pair[0])
		cmd.Wait()
		return stderr.String()
	}
	out := start(gopasstBin, "-4", "-t", "2222:22")
	if ip, router, mask := krunaiParse(out); ip != hostAddr || router != hostGW || mask != "255.255.255.0" {
		t.Errorf("krunai parses guest %q, router %q, mask %q; want %s, %s, 255.255.255.0 from:\n%s",
			ip, router, mask, hostAddr, hostGW, out)
	}
	// With a log file too, as passt's, standard error still has every
	// line, and the file has them after their time.
	logFile := filepath.Join(t.TempDir(), "log")
	if both := start(gopasstBin, "-4", "-t", "2222:22", "--log-file", logFile); summaryBlocks(both) != summaryBlocks(out) {
		t.Errorf("with --log-file, standard error has\n%s\nwant\n%s", both, summaryBlocks(out))
	}
	if log := readFile(logFile); !regexp.MustCompile(`(?m)^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6}     assign: ` + regexp.QuoteMeta(hostAddr) + `$`).MatchString(log) {
		t.Errorf("the log file lacks the summary's timestamped lines:\n%s", log)
	}
	passt := os.Getenv("PASST")
	if passt == "" {
		return
	}
	if want := summaryBlocks(start(passt, "-4", "-t", "2222:22")); summaryBlocks(out) != want || want == "" {
		t.Errorf("gopasst prints\n%s\nupstream passt\n%s", summaryBlocks(out), want)
	}
}

// summaryBlocks is passt's start-up summary: from "MAC:", the titles
// (ending in ':') and lines indented by four, up to the forwards.
func summaryBlocks(out string) string {
	var b []string
	for _, l := range strings.Split(out, "\n") {
		if l == "MAC:" || len(b) > 0 && (strings.HasPrefix(l, "    ") || strings.HasSuffix(l, ":") && !strings.HasPrefix(l, "Inbound")) {
			b = append(b, l)
		} else if len(b) > 0 {
			break
		}
	}
	return strings.Join(b, "\n")
}

// krunaiParse is krunai's parse_passt_dhcp_info: after a line containing
// "DHCP:", the trimmed lines that start with "assign:", "router:" and
// "mask:", until a line that is none of those, "search:" or "dns:".
func krunaiParse(out string) (ip, router, mask string) {
	in := false
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "DHCP:") {
			in = true
			continue
		}
		if !in {
			continue
		}
		tr := strings.TrimSpace(line)
		key, val, _ := strings.Cut(tr, ":")
		switch key {
		case "assign":
			ip = strings.TrimSpace(val)
		case "router":
			router = strings.TrimSpace(val)
		case "mask":
			mask = strings.TrimSpace(val)
		case "search", "dns":
		default:
			in = false
		}
		if ip != "" && router != "" {
			break
		}
	}
	return ip, router, mask
}

// expectRemoved waits for gopasst's helper, which outlives the engine by
// a moment, to remove files.
func expectRemoved(t *testing.T, files ...string) {
	t.Helper()
	waitFor(t, "socket and PID file removed", func() bool {
		for _, f := range files {
			if _, err := os.Stat(f); err == nil {
				return false
			}
		}
		return true
	})
}

// TestCleanupOwnership: at exit gopasst removes only the files it made,
// and only while their paths still name them (issue 21). A file that was
// at -s or --control before is refused and left as it was; a file put at
// the path of the socket, the control socket or the PID file while
// gopasst runs survives its exit; --pcap and --log-file are output and
// stay; a PID file that was there is overwritten and stays.
func TestCleanupOwnership(t *testing.T) {
	precious := func(t *testing.T, path string) {
		t.Helper()
		if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	intact := func(t *testing.T, path string) {
		t.Helper()
		if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
			t.Errorf("%s: now %q, %v", filepath.Base(path), b, err)
		}
	}
	for _, opt := range []string{"-s", "--control"} {
		t.Run("existing file at "+opt, func(t *testing.T) {
			dir := t.TempDir()
			f, sock := filepath.Join(dir, "f"), filepath.Join(dir, "s")
			precious(t, f)
			args := []string{"-f", "-s", sock, opt, f}
			out, err := exec.Command(gopasstBin, append(args, hostArgs...)...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), "not a socket") {
				t.Errorf("err %v, output %s", err, out)
			}
			intact(t, f)
			if _, err := os.Lstat(sock); opt != "-s" && !os.IsNotExist(err) {
				t.Errorf("the socket gopasst made is still there: %v", err)
			}
		})
	}
	t.Run("replaced while running", func(t *testing.T) {
		dir := t.TempDir()
		p := func(n string) string { return filepath.Join(dir, n) }
		cmd := exec.Command(gopasstBin, append([]string{"-f", "-s", p("s"), "--control", p("ctl"),
			"-P", p("pid"), "--pcap", p("pcap"), "--log-file", p("log")}, hostArgs...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the PID file", func() bool { _, err := os.Stat(p("pid")); return err == nil })
		for _, n := range []string{"s", "ctl", "pid"} {
			if err := os.Rename(p(n), p(n+".moved")); err != nil {
				t.Fatal(err)
			}
			precious(t, p(n))
		}
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		for _, n := range []string{"s", "ctl", "pid"} {
			intact(t, p(n))
		}
		for _, n := range []string{"pcap", "log"} {
			if st, err := os.Stat(p(n)); err != nil || st.Size() == 0 {
				t.Errorf("--%s output: %v", n, err)
			}
		}
	})
	t.Run("daemon socket replaced", func(t *testing.T) {
		dir := t.TempDir()
		sock, pid := filepath.Join(dir, "s"), filepath.Join(dir, "pid")
		out, err := exec.Command(gopasstBin, append([]string{"-s", sock, "-P", pid}, hostArgs...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		data, _ := os.ReadFile(pid)
		engine := strings.TrimSpace(string(data))
		helper, _ := strconv.Atoi(procStatus(t, engine)["PPid"])
		if err := os.Remove(sock); err != nil {
			t.Fatal(err)
		}
		precious(t, sock)
		p, _ := strconv.Atoi(engine)
		syscall.Kill(p, syscall.SIGTERM)
		waitFor(t, "the helper to exit", func() bool {
			st, err := os.ReadFile("/proc/" + strconv.Itoa(helper) + "/stat")
			return err != nil || strings.Contains(string(st), ") Z ")
		})
		intact(t, sock)
		expectRemoved(t, pid)
	})
	t.Run("existing PID file", func(t *testing.T) {
		dir := t.TempDir()
		sock, pid := filepath.Join(dir, "s"), filepath.Join(dir, "pid")
		precious(t, pid)
		cmd := exec.Command(gopasstBin, append([]string{"-f", "-s", sock, "-P", pid}, hostArgs...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the PID in the PID file", func() bool { b, _ := os.ReadFile(pid); return string(b) != "precious" })
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if b, err := os.ReadFile(pid); err != nil || string(b) == "precious" {
			t.Errorf("the PID file that was there: %q, %v", b, err)
		}
		expectRemoved(t, sock)
	})
}
