package tests

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestDHCPLease(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"-H", "guest1", "--fqdn", "guest1.example.test"}})
	want := map[string]string{
		"ip": hostAddr, "mask": hostPrefix, "subnet": "255.255.255.0",
		"router": hostGW, "dns": hostGW, "mtu": "65520",
		"domain": "example.test", "search": "example.test lab.example",
		"hostname": "guest1", "serverid": hostGW,
	}
	for k, v := range want {
		if got := w.Lease[k]; got != v {
			t.Errorf("lease %s = %q, want %q", k, got, v)
		}
	}
	// busybox shows option 81 (FQDN) raw: flags, two rcodes, wire name.
	if !strings.Contains(w.Lease["opt81"], "06677565737431076578616d706c6504746573740"+"0") {
		t.Errorf("FQDN option = %q", w.Lease["opt81"])
	}
	if w.Lease["lease"] == "" {
		t.Error("no lease time")
	}
	out := w.Guest.Run(t, "ip", "-4", "addr", "show", tapName)
	if !strings.Contains(out, hostAddr+"/"+hostPrefix) || !strings.Contains(out, "mtu 65520") {
		t.Errorf("guest interface not configured from the lease:\n%s", out)
	}
	t.Logf("lease: %v", w.Lease)
}

func TestPingGateway(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	out := w.Guest.Run(t, "busybox", "ping", "-c", "3", "-W", "5", hostGW)
	if !strings.Contains(out, "3 packets received") {
		t.Fatalf("ping: %s", out)
	}
}

// TestPingForbidden: when the host's ping_group_range forbids ping
// sockets, ICMP echo fails quietly with one clear log line, and the rest
// of the network still works. With --quiet, as with passt's, that
// warning is still logged, and the informational messages are not,
// unless --debug is given too.
func TestPingForbidden(t *testing.T) {
	for _, tc := range []struct {
		args []string
		info bool // the informational messages logged too
	}{{nil, true}, {[]string{"--quiet"}, false}, {[]string{"--quiet", "--debug"}, true}} {
		t.Run(strings.Join(append([]string{"opts"}, tc.args...), " "), func(t *testing.T) {
			w := newWorld(t, WorldOpts{NoPing: true, Args: tc.args})
			for range 2 {
				w.Guest.Cmd("busybox", "ping", "-c", "1", "-W", "1", hostGW).Run()
			}
			if n := strings.Count(w.Log.String(), "ICMP echo unavailable"); n != 1 {
				t.Errorf("%d log lines about ping sockets, want 1:\n%s", n, w.Log.String())
			}
			// --quiet, as passt's, leaves out what is not a warning,
			// unless --debug (QEMU's param=--debug) asks for more.
			if strings.Contains(w.Log.String(), "client connected") != tc.info {
				t.Errorf("informational messages wanted: %v; log:\n%s", tc.info, w.Log.String())
			}
			if w.Proc.ProcessState != nil {
				t.Fatal("gopasst exited")
			}
		})
	}
}

// TestLogFile: --log-file gets the messages, with --trace showing DNS
// queries, and the file stays under --log-size.
func TestLogFile(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"-l", "{dir}/log", "--log-size", "4096", "--trace"}})
	startDNS(t, w, "log.gopasst.example", [4]byte{203, 0, 113, 9})
	for range 40 {
		w.Guest.Run(t, "busybox", "nslookup", "log.gopasst.example", hostGW)
	}
	data, err := os.ReadFile(filepath.Join(w.Dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 4096 || !strings.HasPrefix(string(data), "gopasst ") ||
		!strings.Contains(string(data), "log.gopasst.example.") {
		t.Fatalf("log file of %d bytes:\n%s", len(data), data)
	}
}

// TestPcap: --pcap captures the guest's traffic both ways, in a file that
// tcpdump reads: the DHCP exchange and a TCP handshake are there.
func TestPcap(t *testing.T) {
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("needs tcpdump (Debian package tcpdump)")
	}
	capture := filepath.Join(sharedDir(t), "guest.pcap")
	w := newWorld(t, WorldOpts{Args: []string{"--pcap", capture}})
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(l, func(c net.Conn) { c.Write([]byte("hi")); c.Close() })
	io.ReadAll(w.guestConn(t, net.JoinHostPort(hostGW, port(l.Addr()))))
	out, err := exec.Command("tcpdump", "-n", "-r", capture).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, out)
	}
	for _, want := range []string{"DHCP, Request", "DHCP, Reply", "Flags [S]", "Flags [S.]"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the capture lacks %q:\n%s", want, out)
		}
	}
}

// TestGuestChangesIPv4: a guest that leaves the DHCP address for one of
// its own (a router VM's static WAN address) still gets the host's
// forwarded connections and datagrams, at the address it now sends from,
// as passt follows it (addr_seen); upstream passt runs the same steps.
func TestGuestChangesIPv4(t *testing.T) {
	needRoot(t)
	needReachable(t)
	const static = "198.51.100.123"
	args := []string{"-t", "18080:8080", "-u", "15353:5353"}
	for _, o := range []WorldOpts{
		{Args: args},
		{Backend: append([]string{upstreamPasst(t), "-f", "-s", "{sock}"}, args...)},
	} {
		w := newWorld(t, o)
		name := filepath.Base(w.argv[0])
		acceptLoop(w.Guest.Listen(t, "tcp", "0.0.0.0:8080"), func(c net.Conn) {
			io.ReadAll(c) // all of it, so that closing sends no reset
			c.Write([]byte(c.LocalAddr().(*net.TCPAddr).IP.String()))
			c.Close()
		})
		echoPackets(w.Guest.ListenPacket(t, "udp", "0.0.0.0:5353"), "")
		if got := fwdAnswer(w.Host, "tcp", "127.0.0.1:18080"); got != hostAddr {
			t.Fatalf("%s: before the change, the guest answered at %q, want %s", name, got, hostAddr)
		}
		w.Guest.Run(t, "ip", "-4", "addr", "flush", "dev", tapName)
		w.Guest.Run(t, "ip", "-4", "addr", "add", static+"/24", "dev", tapName)
		w.Guest.Run(t, "ip", "-4", "route", "replace", "default", "via", hostGW)
		// The backend learns the address from what the guest sends.
		out := w.Guest.Run(t, "busybox", "ping", "-c", "1", "-W", "5", hostGW)
		if !strings.Contains(out, "1 packets received") {
			t.Fatalf("%s: ping from %s: %s", name, static, out)
		}
		if got := fwdAnswer(w.Host, "tcp", "127.0.0.1:18080"); got != static {
			t.Errorf("%s: a forwarded connection after the change: %q, want the guest at %s", name, got, static)
		}
		if got := fwdAnswer(w.Host, "udp", "127.0.0.1:15353"); got != "hi" {
			t.Errorf("%s: a forwarded datagram after the change: %q, want its echo", name, got)
		}
	}
}
