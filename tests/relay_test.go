package tests

import (
	"bytes"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// TestGuestRelay: "gopasst guest" makes the guest's tap and relays it to
// gopasst's socket; DHCP configures it, and TCP, UDP and ping work. When
// gopasst is killed and started again on the same socket, the relay
// reconnects and the guest's network comes back; SIGTERM ends the relay.
func TestGuestRelay(t *testing.T) {
	w := newWorld(t, WorldOpts{Relay: []string{gopasstBin, "guest", "--socket", "{sock}", "--tap", "{tap}"}})
	if w.Lease["ip"] != hostAddr {
		t.Fatalf("lease %v", w.Lease)
	}
	if out := w.Guest.Run(t, "busybox", "ping", "-c", "2", "-W", "5", hostGW); !strings.Contains(out, "2 packets received") {
		t.Fatalf("ping: %s", out)
	}
	tcpTransfer(t, w, "127.0.0.1:0", hostGW, 16<<20)
	udpEcho(t, w, "127.0.0.1:0", hostGW)

	// gopasst dies and comes back on the same (now stale) socket. Restart
	// waits for the engine, which ends on its helper's death signal, to
	// be gone: until then the relay's connection still reaches it.
	w.Restart(t)
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(l, func(c net.Conn) { c.Write([]byte("back")); c.Close() })
	waitLong(t, "the guest's network after gopasst restarted", 20*time.Second, func() bool {
		c, err := w.Guest.Dial("tcp", net.JoinHostPort(hostGW, port(l.Addr())), time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 4)
		n, _ := c.Read(b)
		return string(b[:n]) == "back"
	})
	if !strings.Contains(w.RelayLog.String(), "reconnecting") {
		t.Errorf("the relay's log does not show the reconnection:\n%s", w.RelayLog.String())
	}
}

// TestGuestRelayHostileHost: a "host" that sends an impossible frame
// length makes the relay log it and reconnect; it never crashes.
func TestGuestRelayHostileHost(t *testing.T) {
	needRoot(t)
	guest := newNetns(t, "gpg")
	sock := sharedDir(t) + "/hostile.sock"
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	conns := make(chan struct{}, 8)
	acceptLoop(l, func(c net.Conn) {
		conns <- struct{}{}
		c.Write([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}) // a 4 GiB frame
		time.Sleep(time.Second)
		c.Close()
	})
	log := &syncBuffer{}
	relay := guest.Cmd(gopasstBin, "guest", "--socket", sock, "--tap", tapName)
	relay.Stdout, relay.Stderr = log, log
	if err := relay.Start(); err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // the first connection, then the reconnection
		select {
		case <-conns:
		case <-time.After(10 * time.Second):
			relay.Process.Kill()
			t.Fatalf("connection %d never came; log:\n%s", i+1, log.String())
		}
	}
	relay.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- relay.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("relay exited with %v; log:\n%s", err, log.String())
		}
	case <-time.After(5 * time.Second):
		relay.Process.Kill()
		t.Fatal("relay did not exit on SIGINT")
	}
	if !strings.Contains(log.String(), "frame length of 4294967295") {
		t.Errorf("log does not name the bad length:\n%s", log.String())
	}
}

// TestGvforwarder: gvisor-tap-vsock's gvforwarder, unmodified, on
// gopasst's unix socket. gopasst tells its framing from its first bytes,
// offers it an MTU its receive buffer takes, and never sends it a frame
// larger than that: a 60,000-byte datagram from the host reaches it in
// fragments within that MTU, which its kernel puts together, and the
// next one arrives too.
func TestGvforwarder(t *testing.T) {
	fwd, err := goInstall("github.com/containers/gvisor-tap-vsock/cmd/vm", gvisorTapVsock)
	if err != nil {
		t.Skip(err)
	}
	w := newWorld(t, WorldOpts{Relay: []string{fwd, "-url", "unix://{sock}", "-iface", "{tap}",
		"-preexisting", "-stop-if-exist", ""}, RelayTapFirst: true})
	if w.Lease["mtu"] != "4000" {
		t.Errorf("lease MTU %q, want 4000", w.Lease["mtu"])
	}
	if out := w.Guest.Run(t, "busybox", "ping", "-c", "2", "-W", "5", hostGW); !strings.Contains(out, "2 packets received") {
		t.Fatalf("ping: %s", out)
	}
	tcpTransfer(t, w, "127.0.0.1:0", hostGW, 16<<20)

	host := w.Host.ListenPacket(t, "udp", "127.0.0.1:0")
	c := w.Guest.ListenPacket(t, "udp", ":0")
	to := &net.UDPAddr{IP: net.ParseIP(hostGW), Port: host.LocalAddr().(*net.UDPAddr).Port}
	c.WriteTo([]byte("hello"), to) // opens the flow
	buf := make([]byte, 65536)
	host.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, from, err := host.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	large := bytes.Repeat([]byte{1}, 60000)
	host.WriteTo(large, from)
	host.WriteTo([]byte("small"), from)
	for _, want := range [][]byte{large, []byte("small")} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := c.ReadFrom(buf)
		if err != nil || !bytes.Equal(buf[:n], want) {
			t.Fatalf("a %d-byte datagram from the host: %d bytes, %v; want it whole, then the next", len(want), n, err)
		}
	}
}
