package tests

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
				argv = append([]string{"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"}, argv...)
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

// pastaShell runs pasta in command mode as nobody (upstream's needs a
// user namespace of its own) from a new host namespace, with args and
// script on its standard input, SHELL=/bin/sh, and returns its output.
func pastaShell(t *testing.T, script string, args ...string) string {
	t.Helper()
	needReachable(t)
	h := newHost(t, WorldOpts{})
	argv := []string{"--reuid", "65534", "--regid", "65534", "--clear-groups", "env", "SHELL=/bin/sh", pastaLink(t), "--config-net", "-q"}
	cmd := h.Cmd("setpriv", append(argv, args...)...)
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
		if out := pastaShell(t, `echo "argv0=$0"`, args...); !strings.Contains(out, "argv0=-/bin/sh\n") {
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
		if out := pastaShell(t, "hostname", c.args...); strings.TrimSpace(out) != c.want {
			t.Errorf("pasta %q: hostname %q, want %q", c.args, out, c.want)
		}
	}
}
