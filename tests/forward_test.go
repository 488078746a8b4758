package tests

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// guestServe answers every connection on a guest port with "PORT:" and
// the echo of what it receives, so a test sees which guest port it hit.
func guestServe(t *testing.T, w *World, gport int) {
	l := w.Guest.Listen(t, "tcp", fmt.Sprintf(":%d", gport))
	acceptLoop(l, func(c net.Conn) {
		defer c.Close()
		fmt.Fprintf(c, "%d:", gport)
		io.Copy(c, c)
	})
}

// hostAsk connects from the host namespace, sends msg, half-closes and
// returns the whole answer.
func hostAsk(w *World, addr, msg string) (string, error) {
	c, err := w.Host.Dial("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte(msg))
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

func expectAnswer(t *testing.T, w *World, addr string, gport int) {
	t.Helper()
	got, err := hostAsk(w, addr, "hi")
	if want := fmt.Sprintf("%d:hi", gport); err != nil || got != want {
		t.Errorf("%s: got %q, %v; want %q", addr, got, err, want)
	}
}

func expectRefused(t *testing.T, w *World, addr string) {
	t.Helper()
	_, err := hostAsk(w, addr, "hi")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("%s: %v, want connection refused", addr, err)
	}
}

// TestForwardRanges: a mapped range with exclusions, bound to host
// loopback only, in libvirt's style of one -t per <portForward>.
func TestForwardRanges(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{
		"-t", "127.0.0.1/18200-18204:18300-18304,~18202",
		"--tcp-ports", "18022:22",
	}})
	for g := 18300; g <= 18304; g++ {
		guestServe(t, w, g)
	}
	guestServe(t, w, 22)
	for h := 18200; h <= 18204; h++ {
		addr := fmt.Sprintf("127.0.0.1:%d", h)
		if h == 18202 {
			expectRefused(t, w, addr)
			continue
		}
		expectAnswer(t, w, addr, h+100)
	}
	// Bound to 127.0.0.1 only: the host's other address is not forwarded.
	expectRefused(t, w, hostAddr+":18200")
	// No address: every host address, IPv4 and IPv6.
	expectAnswer(t, w, hostAddr+":18022", 22)
	expectAnswer(t, w, "[::1]:18022", 22)
}

// TestForwardUDP: datagrams reach the guest and replies return to the
// original sender.
func TestForwardUDP(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"-u", "15353:5353"}})
	checkUDPForward(t, w, "127.0.0.1:0", "[::1]:0")
}

// checkUDPForward runs an echo server on guest port 5353 and checks that a
// datagram from each sender address on the host, sent to host port 15353,
// comes back echoed from the address it was sent to.
func checkUDPForward(t *testing.T, w *World, senders ...string) {
	t.Helper()
	echoPackets(w.Guest.ListenPacket(t, "udp", ":5353"), "guest:")
	for _, sender := range senders {
		c := w.Host.ListenPacket(t, "udp", sender)
		dst, _ := net.ResolveUDPAddr("udp", strings.Replace(sender, ":0", ":15353", 1))
		buf := make([]byte, 2048)
		ok := false
		for try := 0; try < 3 && !ok; try++ {
			c.WriteTo([]byte("ping"), dst)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, from, err := c.ReadFrom(buf)
			if err == nil {
				ok = string(buf[:n]) == "guest:ping" && from.String() == dst.String()
				if !ok {
					t.Fatalf("%s: reply %q from %v", sender, buf[:n], from)
				}
			}
		}
		if !ok {
			t.Fatalf("%s: no reply", sender)
		}
	}
}

// TestForwardAll: "all" forwards every free non-ephemeral port and leaves
// ports already bound on the host alone.
func TestForwardAll(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"-t", "all"}, BeforeStart: func(h *Netns) {
		taken := h.Listen(t, "tcp", "127.0.0.1:15556")
		go func() {
			for {
				c, err := taken.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("host"))
				c.Close()
			}
		}()
	}})
	guestServe(t, w, 15555)
	guestServe(t, w, 15556)
	expectAnswer(t, w, "127.0.0.1:15555", 15555)
	if got, err := hostAsk(w, "127.0.0.1:15556", ""); err != nil || got != "host" {
		t.Errorf("port bound on the host before start: got %q, %v", got, err)
	}
}

// TestForwardFamily: with -4 a forward without an address binds the
// IPv4 wildcard alone and with -6 the IPv6 one, as passt does, so the
// other family's clients are refused, not carried to the guest.
func TestForwardFamily(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"-4", "-t", "18400:8080"}})
	guestServe(t, w, 8080)
	expectAnswer(t, w, "127.0.0.1:18400", 8080)
	expectRefused(t, w, "[::1]:18400")

	w = newWorld(t, WorldOpts{NoGuest: true, Args: []string{"-6", "-t", "18401"}})
	waitFor(t, "the forward on [::1]:18401", func() bool {
		c, err := w.Host.Dial("tcp", "[::1]:18401", time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if _, err := w.Host.Dial("tcp", "127.0.0.1:18401", 3*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("-6: 127.0.0.1:18401: %v, want connection refused", err)
	}
}

// TestForwardOutOfDescriptors: more forwards than the open file limit
// allows fail to start, and say why, as passt says "Too many open files".
func TestForwardOutOfDescriptors(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skip("needs util-linux's prlimit")
	}
	h := newHost(t, WorldOpts{})
	sock := filepath.Join(t.TempDir(), "s")
	out, err := h.Cmd("prlimit", "--nofile=200:200", gopasstBin, "-f", "-q", "-s", sock, "-t", "127.0.0.1/20000-20300").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "too many open files") {
		t.Errorf("exit %v, output %q; want a failure for too many open files", err, out)
	}
}

func ctl(t *testing.T, w *World, args ...string) string {
	t.Helper()
	out, err := exec.Command(gopasstBin, append([]string{"ctl", filepath.Join(w.Dir, "ctl")}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ctl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestForwardRuntime: forwards added and removed through the control
// socket; established connections survive the removal of forwards.
func TestForwardRuntime(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"--control", "{dir}/ctl", "-t", "19001"}})
	guestServe(t, w, 19001)
	guestServe(t, w, 19002)
	if st, err := os.Stat(filepath.Join(w.Dir, "ctl")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("control socket: %v, mode %v", err, st.Mode())
	}
	expectRefused(t, w, "127.0.0.1:19002")
	ctl(t, w, "add", "-t", "19002", "-u", "19003")
	expectAnswer(t, w, "127.0.0.1:19002", 19002)
	if out := ctl(t, w, "list"); !strings.Contains(out, "tcp 19002 -> guest port 19002") ||
		!strings.Contains(out, "udp 19003") || !strings.Contains(out, "tcp 19001") {
		t.Errorf("list:\n%s", out)
	}

	// An established connection through 19001 ...
	c, err := w.Host.Dial("tcp", "127.0.0.1:19001", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	c.Write([]byte("a"))
	if n, _ := io.ReadAtLeast(c, buf, 7); string(buf[:n]) != "19001:a" {
		t.Fatalf("before removal: %q", buf[:n])
	}
	// ... survives the removal of another forward, and of its own.
	ctl(t, w, "remove", "-t", "19002")
	expectRefused(t, w, "127.0.0.1:19002")
	ctl(t, w, "remove", "-t", "19001")
	expectRefused(t, w, "127.0.0.1:19001")
	c.Write([]byte("b"))
	if n, _ := io.ReadAtLeast(c, buf, 1); string(buf[:n]) != "b" {
		t.Fatalf("after removal: %q", buf[:n])
	}

	// A failing request changes nothing.
	out, err := exec.Command(gopasstBin, "ctl", filepath.Join(w.Dir, "ctl"), "add", "-t", "19005", "-t", "5-1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "5-1") {
		t.Errorf("bad spec accepted: %s", out)
	}
	expectRefused(t, w, "127.0.0.1:19005")
	out, err = exec.Command(gopasstBin, "ctl", filepath.Join(w.Dir, "ctl"), "add",
		"--unix-fwd", "6001:/tmp/agent", "--cmd-fwd", "6002:/nonexistent/cmd").CombinedOutput()
	if err == nil || strings.Contains(ctl(t, w, "list"), "6001") {
		t.Errorf("a half-failed add left forwards behind: %s", out)
	}
}

// TestUnixForward: a guest connection to the gateway on a diverted port
// reaches a host unix socket.
func TestUnixForward(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"--unix-fwd", "6000:{dir}/agent.sock"}})
	l, err := net.Listen("unix", filepath.Join(w.Dir, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// gopasst connects as the user it runs as, nobody when we are root.
	if err := os.Chmod(filepath.Join(w.Dir, "agent.sock"), 0o666); err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		msg, _ := io.ReadAll(c)
		c.Write(append([]byte("unix got "), msg...))
	}()
	got := guestAsk(t, w, net.JoinHostPort(hostGW, "6000"), strings.Repeat("x", 300000))
	if got != "unix got "+strings.Repeat("x", 300000) {
		t.Fatalf("got %d bytes: %.40q", len(got), got)
	}
}

// TestCmdForward: a diverted port runs a command per connection, wired
// through stdin and stdout.
func TestCmdForward(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{
		"--cmd-fwd", "7000:cat",
		"--cmd-fwd", "7001:sh -c 'echo early; exit 0'",
	}})
	msg := strings.Repeat("cat me ", 50000)
	if got := guestAsk(t, w, net.JoinHostPort(hostGW, "7000"), msg); got != msg {
		t.Fatalf("cat: %d bytes back, want %d", len(got), len(msg))
	}
	// A command that exits before reading: the guest sees its output and
	// then the end of the connection.
	got, err := io.ReadAll(w.guestConn(t, net.JoinHostPort(hostGW, "7001")))
	if err != nil || string(got) != "early\n" {
		t.Fatalf("early exit: %q, %v", got, err)
	}
}

// guestAsk connects from the guest, sends msg, half-closes and returns the
// whole answer.
func guestAsk(t *testing.T, w *World, addr, msg string) string {
	t.Helper()
	c := w.guestConn(t, addr)
	go func() {
		c.Write([]byte(msg))
		c.(*net.TCPConn).CloseWrite()
	}()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
