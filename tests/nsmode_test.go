package tests

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// "gopasst ns" (pasta's command mode, --config-net implied) gives a
// program a network stack of its own: run as root and as nobody (then in
// a user namespace of its own), the program sees only loopback and tap0
// (-I), configured like a guest, reaches the host's
// services through the gateway over IPv4 and IPv6, resolves names through
// the resolv.conf gopasst gives it, is reached through a forward that the
// control socket lists, and its exit status is gopasst's.
func TestNamespaceMode(t *testing.T) {
	needRoot(t)
	needBusybox(t)
	for _, user := range []string{"root", "nobody"} {
		t.Run(user, func(t *testing.T) {
			h := newHost(t, WorldOpts{})
			w := &World{Host: h}
			startDNS(t, w, "ns.gopasst.example", [4]byte{203, 0, 113, 5})
			echo := func(l net.Listener) {
				acceptLoop(l, func(c net.Conn) { io.Copy(c, c); c.Close() })
			}
			l4 := h.Listen(t, "tcp", "127.0.0.1:0")
			l6 := h.Listen(t, "tcp", "[::1]:0")
			echo(l4)
			echo(l6)
			script := `
busybox ip -4 addr show tap0 | sed 's/^/ADDR /'
busybox ip link | grep -c '^[0-9]' | sed 's/^/LINKS /'
echo hello | busybox nc ` + hostGW + ` ` + port(l4.Addr()) + ` | sed 's/^/ECHO /'
busybox nslookup ns.gopasst.example | sed 's/^/DNS /'
echo fwd-ok | busybox nc -l -p 8090 &
echo hello6 | busybox nc ` + host6GW + ` ` + port(l6.Addr()) + ` | sed 's/^/ECHO6 /'
wait
exit 7
`
			ctl := filepath.Join(sharedDir(t), "ctl") // nobody makes the control socket here
			argv := []string{gopasstBin, "ns", "-I", "tap0", "-t", "18090:8090", "--control", ctl, "--", "busybox", "sh", "-c", script}
			if user == "nobody" {
				needReachable(t)
				argv = append(slices.Clip(asNobody), argv...)
			}
			cmd := h.Cmd(argv[0], argv[1:]...)
			out := &syncBuffer{}
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// The program runs until it has served one connection on its
			// port 8090: the control socket lists the forward meanwhile.
			var list []byte
			if !pollUntil(20*time.Second, func() bool {
				list, _ = h.Cmd(gopasstBin, "ctl", ctl, "list").CombinedOutput()
				return strings.Contains(string(list), "tcp 18090 -> guest port 8090")
			}) {
				t.Errorf("gopasst ctl list during the program: %q", list)
			}
			var fwd string
			waitLong(t, "the forward into the namespace", 20*time.Second, func() bool {
				c, err := h.Dial("tcp", "127.0.0.1:18090", time.Second)
				if err != nil {
					return false
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				b, _ := io.ReadAll(c)
				fwd = strings.TrimSpace(string(b))
				return fwd != ""
			})
			err := cmd.Wait()
			got := out.String()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
				t.Errorf("gopasst ns exited with %v, want the program's status 7", err)
			}
			for _, want := range []string{"ADDR     inet " + hostAddr + "/" + hostPrefix, "LINKS 2", "ECHO hello",
				"Address: 203.0.113.5", "ECHO6 hello6"} {
				if !strings.Contains(got, want) {
					t.Errorf("program output lacks %q", want)
				}
			}
			if fwd != "fwd-ok" {
				t.Errorf("forward into the namespace answered %q", fwd)
			}
			if t.Failed() {
				t.Logf("program output:\n%s", got)
			}
		})
	}
}

// pastaShell runs pasta in command mode through run (asNobody, as
// upstream's command mode needs a user namespace of its own, which it
// makes only when not root; or nil for root) from a new host namespace,
// with args and script on its standard input, SHELL=/bin/sh, and returns
// its output.
func pastaShell(t *testing.T, run []string, script string, args ...string) string {
	t.Helper()
	if len(run) > 0 {
		needReachable(t)
	}
	h := newHost(t, WorldOpts{})
	argv := append(append(slices.Clip(run), "env", "SHELL=/bin/sh", pastaLink(t), "--config-net", "-q"), args...)
	cmd := h.Cmd(argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pasta %q: %v: %s", args, err, out)
	}
	return string(out)
}

// Without a command, pasta starts $SHELL as a login shell (its argv[0]
// with a leading dash), so that it reads the user's profile.
func TestPastaCommandLoginShell(t *testing.T) {
	needRoot(t)
	for _, args := range [][]string{nil, {"--"}} {
		if out := pastaShell(t, asNobody, `echo "argv0=$0"`, args...); !strings.Contains(out, "argv0=-/bin/sh\n") {
			t.Errorf("pasta %q: the shell says %q, want argv0=-/bin/sh", args, out)
		}
	}
}

// The command has a hostname of its own, as pasta's: -H, else the host's
// with "pasta-" before it.
func TestPastaCommandHostname(t *testing.T) {
	needRoot(t)
	host, _ := os.Hostname()
	for _, c := range []struct {
		args []string
		want string
	}{{nil, "pasta-" + host}, {[]string{"-H", "box.example"}, "box.example"}} {
		if out := pastaShell(t, asNobody, "hostname", c.args...); strings.TrimSpace(out) != c.want {
			t.Errorf("pasta %q: hostname %q, want %q", c.args, out, c.want)
		}
	}
}

// The command's root group may open ping sockets (icmp(7)), which some
// programs use rather than raw ones: net.ipv4.ping_group_range is "0 0"
// in its namespace, as pasta sets it, where a new namespace's excludes
// every group.
func TestPastaCommandPingSockets(t *testing.T) {
	needRoot(t)
	if out := pastaShell(t, asNobody, "cat /proc/sys/net/ipv4/ping_group_range"); !slices.Equal(strings.Fields(out), []string{"0", "0"}) {
		t.Errorf("the command's net.ipv4.ping_group_range is %q, want 0 0", out)
	}
}

// The command runs in a PID namespace of its own, as pasta's: it sees
// none of the host's processes, an orphan is reaped there (by gopasst,
// its init), and what it leaves running ends with it.
func TestPastaCommandPIDNamespace(t *testing.T) {
	needRoot(t)
	script := fmt.Sprintf(`test -e /proc/%d && echo SEES-HOST
orphan=$(sh -c 'true & echo $!')
timeout 20 sh -c "while test -e /proc/$orphan; do sleep 0.1; done" && echo REAPED
sleep 7013 >/dev/null 2>&1 &
echo STARTED`, os.Getpid())
	leftover := func() bool { return exec.Command("pgrep", "-f", "^sleep 7013$").Run() == nil }
	t.Cleanup(func() { exec.Command("pkill", "-KILL", "-f", "^sleep 7013$").Run() })
	out := pastaShell(t, asNobody, script)
	if !strings.Contains(out, "REAPED\nSTARTED") || strings.Contains(out, "SEES-HOST") {
		t.Errorf("the command's output: %q, want REAPED and STARTED, not SEES-HOST", out)
	}
	waitLong(t, "the command's background process to end", 20*time.Second, func() bool { return !leftover() })
}
