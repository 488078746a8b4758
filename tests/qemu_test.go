package tests

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQEMUGuest boots a real QEMU guest under TCG (no KVM needed): the
// host's Debian kernel and a busybox initramfs, with "-netdev stream" on
// gopasst's socket, then with "-netdev vhost-user" (the guest's memory
// shared through a memfd), checking every checksum it receives; then over
// vhost-user again with the device's defaults, where the guest completes
// TCP checksums itself (GUEST_CSUM). The guest reports what it saw on its
// serial console.
func TestQEMUGuest(t *testing.T) {
	for _, c := range []struct {
		name   string
		vhost  bool
		device string
	}{
		{"stream", false, "guest_csum=off"},
		{"vhost-user", true, "guest_csum=off"},
		{"vhost-user, partial checksums", true, ""},
	} {
		t.Run(c.name, func(t *testing.T) { testQEMUGuest(t, c.vhost, c.device) })
	}
}

func testQEMUGuest(t *testing.T, vhost bool, device string) {
	qemu, kernel, kver := needQEMU(t)
	args := []string{"-t", "18080:8080", "-u", "15353:5353"}
	if vhost {
		args = append(args, "--vhost-user")
	}
	w := newWorld(t, WorldOpts{NoGuest: true, Args: args})
	w.VhostUser = vhost
	// With guest_csum=off the guest checks what it gets: over vhost-user,
	// frames built in its buffers from scattered pieces must carry right
	// checksums.
	w.Device = device
	udpecho := buildForGuest(t, w.Dir, "./cmd/udpecho")
	// The guest waits on this port while the host probes its forwards.
	hold := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	release := make(chan struct{})
	go func() {
		c, err := hold.Accept()
		if err != nil {
			return
		}
		<-release
		c.Close()
	}()
	startDNS(t, w, "test.gopasst.example", [4]byte{203, 0, 113, 7})

	const downSize, down6Size = 16 << 20, 4 << 20
	down := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(down, func(c net.Conn) {
		io.Copy(c, newStream(2, downSize))
		c.Close()
	})
	down6 := w.Host.Listen(t, "tcp", "[::1]:0")
	acceptLoop(down6, func(c net.Conn) {
		io.Copy(c, newStream(3, down6Size))
		c.Close()
	})
	// The guest uploads "yes gopasst | head -c upSize"; the host answers
	// with the SHA-256 of what it received.
	const upSize = 4 << 20
	sumUpload := func(c net.Conn) {
		h := sha256.New()
		io.CopyN(h, c, upSize)
		fmt.Fprintf(c, "%x\n", h.Sum(nil))
		c.Close()
	}
	up := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(up, sumUpload)
	up6 := w.Host.Listen(t, "tcp", "[::1]:0")
	acceptLoop(up6, sumUpload)

	script := fmt.Sprintf(`
`+guestDHCPScript+`ip link set lo up
ip link set eth0 up
RESOLV=/etc/resolv.conf udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /etc/dhcp.sh -O mtu -O search
ip addr show eth0 | sed 's/^/GOPASST-ADDR /'
ping -c 2 -W 5 %[1]s | sed 's/^/GOPASST-PING /'
ping -c 1 -W 5 -s 65507 %[1]s | sed 's/^/GOPASST-PINGBIG /'
echo "GOPASST-DOWN $(nc %[1]s %[2]s | sha256sum)"
echo "GOPASST-UP $(yes gopasst | head -c %[4]d | nc %[1]s %[3]s)"
nslookup test.gopasst.example | sed 's/^/GOPASST-DNS /'
for i in $(seq 60); do ip -6 addr show dev eth0 | grep -q 'scope global' && break; sleep 1; done
sleep 2 # duplicate address detection
ip -6 addr show dev eth0 | sed 's/^/GOPASST-ADDR6 /'
ip -6 route | sed 's/^/GOPASST-ROUTE6 /'
ping -6 -c 2 -W 5 %[6]s | sed 's/^/GOPASST-PING6 /'
ping -6 -c 1 -W 5 -s 65527 %[6]s | sed 's/^/GOPASST-PINGBIG6 /'
rtr=$(ip -6 route | sed -n 's/^default via \([^ ]*\) .*/\1/p')
ping -6 -c 2 -W 5 -I eth0 $rtr | sed 's/^/GOPASST-PINGLL /'
echo "GOPASST-DOWN6 $(nc %[6]s %[7]s | sha256sum)"
echo "GOPASST-UP6 $(yes gopasst | head -c %[4]d | nc %[6]s %[8]s)"
printf '#!/bin/sh\necho hello-from-guest\n' > /bin/hello; chmod +x /bin/hello
nc -ll -p 8080 -e /bin/hello &
/bin/udpecho 5353 &
listening t 8080; listening u 5353
echo GOPASST-READY
nc %[1]s %[5]s
echo GOPASST-DONE
`, hostGW, port(down.Addr()), port(up.Addr()), upSize, port(hold.Addr()), host6GW, port(down6.Addr()), port(up6.Addr()))
	initrd := filepath.Join(w.Dir, "initrd.cpio")
	if err := buildInitramfs(initrd, kver, script, map[string]string{"/bin/udpecho": udpecho}); err != nil {
		t.Fatal(err)
	}

	var inbound []string
	report := bootGuest(t, w, qemu, kernel, initrd, 512, func(k string) {
		if k == "READY" {
			inbound = probeInbound(w)
			close(release)
		}
	})

	lease := strings.Join(report["LEASE"], "")
	for _, want := range []string{"ip=" + hostAddr, "mask=" + hostPrefix, "router=" + hostGW, "dns=" + hostGW, "mtu=65520"} {
		if !strings.Contains(lease, want) {
			t.Errorf("lease %q lacks %s", lease, want)
		}
	}
	if ping := strings.Join(report["PING"], "\n"); !strings.Contains(ping, "2 packets received") {
		t.Errorf("ping from the guest:\n%s", ping)
	}
	wantDown := hex.EncodeToString(sumStream(2, downSize))
	if got := strings.Join(report["DOWN"], ""); !strings.HasPrefix(got, wantDown) {
		t.Errorf("download sha256 %q, want %s", got, wantDown)
	}
	h := sha256.New()
	io.CopyN(h, strings.NewReader(strings.Repeat("gopasst\n", upSize/8+1)), upSize)
	for _, k := range []string{"UP", "UP6"} {
		if got, want := strings.Join(report[k], ""), hex.EncodeToString(h.Sum(nil)); got != want {
			t.Errorf("%s: upload sha256 as the host saw it %q, want %s", k, got, want)
		}
	}
	if dns := strings.Join(report["DNS"], "\n"); !strings.Contains(dns, "203.0.113.7") {
		t.Errorf("nslookup in the guest:\n%s", dns)
	}
	if want := []string{"tcp hello-from-guest", "tcp6 hello-from-guest", "udp guest:ping"}; strings.Join(inbound, "|") != strings.Join(want, "|") {
		t.Errorf("inbound forwards from the host: %q, want %q", inbound, want)
	}
	addr6, route6 := strings.Join(report["ADDR6"], "\n"), strings.Join(report["ROUTE6"], "\n")
	if !strings.Contains(addr6, "inet6 2001:db8:1:0:") || !strings.Contains(route6, "default via fe80::") {
		t.Errorf("guest IPv6 configuration:\n%s\n%s", addr6, route6)
	}
	if ping := strings.Join(report["PING6"], "\n"); !strings.Contains(ping, "2 packets received") {
		t.Errorf("ping -6 from the guest:\n%s", ping)
	}
	if ping := strings.Join(report["PINGLL"], "\n"); !strings.Contains(ping, "2 packets received") {
		t.Errorf("ping -6 to the router's link-local address:\n%s", ping)
	}
	// IP's largest echo requests pass the MTU of 65520 by a few bytes:
	// the guest sends them in two fragments, and gets its replies so.
	for _, k := range []string{"PINGBIG", "PINGBIG6"} {
		if ping := strings.Join(report[k], "\n"); !strings.Contains(ping, "1 packets received") {
			t.Errorf("%s: IP's largest echo request, in fragments:\n%s", k, ping)
		}
	}
	if got, want := strings.Join(report["DOWN6"], ""), hex.EncodeToString(sumStream(3, down6Size)); !strings.HasPrefix(got, want) {
		t.Errorf("IPv6 download sha256 %q, want %s", got, want)
	}
	t.Logf("guest report:\n  lease: %s\n  addr: %s\n  dns: %s\n  ip -6 addr:\n%s\n  ip -6 route:\n%s", lease,
		strings.Join(report["ADDR"], "\n        "), strings.Join(report["DNS"], "\n       "), addr6, route6)
}

// bootGuest boots kernel and initrd under TCG with memory MiB, its
// network on w's socket, and returns what the guest reported on its
// console: each line "GOPASST-KEY value" adds value under KEY, and
// onReport hears each KEY as it comes. It fails the test unless the
// guest reported DONE.
func bootGuest(t *testing.T, w *World, qemu, kernel, initrd string, memory int, onReport func(key string)) map[string][]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, qemuArgs(w, kernel, initrd, memory)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	report := map[string][]string{}
	var console strings.Builder
	s := bufio.NewScanner(out)
	for s.Scan() {
		line := strings.TrimRight(s.Text(), "\r")
		console.WriteString(line + "\n")
		if i := strings.Index(line, "GOPASST-"); i >= 0 {
			k, v, _ := strings.Cut(line[i+len("GOPASST-"):], " ")
			report[k] = append(report[k], v)
			onReport(k)
		}
	}
	cmd.Wait()
	if t.Failed() || len(report["DONE"]) == 0 {
		t.Fatalf("guest did not finish; console:\n%s", console.String())
	}
	return report
}

// qemuArgs are QEMU's options to boot kernel and initrd under TCG with
// memory MiB, its console on stdio and its network on w's socket.
func qemuArgs(w *World, kernel, initrd string, memory int) []string {
	return append([]string{"-accel", "tcg", "-cpu", "max", "-m", fmt.Sprint(memory),
		"-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet"}, qemuNetArgs(w, memory)...)
}

// qemuNetArgs are QEMU's options for a virtio-net device on w's socket:
// "-netdev stream", or "-netdev vhost-user", for which the guest's memory
// must be shareable (a memfd) and the chardev may reconnect.
func qemuNetArgs(w *World, memory int) []string {
	device := "virtio-net-pci,netdev=n0,romfile="
	if w.Device != "" {
		device += "," + w.Device
	}
	if !w.VhostUser {
		return []string{"-netdev", "stream,id=n0,server=off,addr.type=unix,addr.path=" + w.Sock,
			"-device", device}
	}
	return []string{"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", memory),
		"-numa", "node,memdev=mem",
		"-chardev", "socket,id=c0,path=" + w.Sock + ",reconnect-ms=1000",
		"-netdev", "vhost-user,id=n0,chardev=c0",
		"-device", device}
}

// probeInbound reaches the guest's services through gopasst's -t and -u
// forwards from the host namespace and returns what answered.
func probeInbound(w *World) []string {
	var out []string
	for _, probe := range [][2]string{{"tcp", "127.0.0.1:18080"}, {"tcp6", "[::1]:18080"}} {
		if c, err := w.Host.Dial("tcp", probe[1], 10*time.Second); err == nil {
			c.SetDeadline(time.Now().Add(30 * time.Second))
			b, _ := io.ReadAll(c)
			c.Close()
			out = append(out, probe[0]+" "+strings.TrimSpace(string(b)))
		}
	}
	var pc net.PacketConn
	w.Host.do(func() { pc, _ = net.ListenPacket("udp", "127.0.0.1:0") })
	if pc == nil {
		return out
	}
	defer pc.Close()
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 15353}
	buf := make([]byte, 256)
	for try := 0; try < 10; try++ {
		pc.WriteTo([]byte("ping"), dst)
		pc.SetReadDeadline(time.Now().Add(3 * time.Second))
		if n, _, err := pc.ReadFrom(buf); err == nil {
			out = append(out, "udp "+string(buf[:n]))
			break
		}
	}
	return out
}

// TestVhostUserReconnect kills gopasst under a running vhost-user guest
// and starts it again: QEMU reconnects (reconnect-ms, as libvirt sets
// it), sets the rings up again, and the guest's TCP works again. The
// guest's MTU is 1500, so its downloads come as large-receive frames
// (GUEST_TSO) that it cuts into segments itself.
func TestVhostUserReconnect(t *testing.T) {
	qemu, kernel, kver := needQEMU(t)
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--vhost-user", "--mtu", "1500"}})
	w.VhostUser = true
	const size = 4 << 20
	want := hex.EncodeToString(sumStream(4, size))
	down := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(down, func(c net.Conn) {
		io.Copy(c, newStream(4, size))
		c.Close()
	})
	script := fmt.Sprintf(guestDHCPScript+`ip link set lo up
ip link set eth0 up
RESOLV=/etc/resolv.conf udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /etc/dhcp.sh -O mtu
echo "GOPASST-BEFORE $(nc %[1]s %[2]s | sha256sum)"
echo GOPASST-RESTART
sleep 1
for i in $(seq 60); do
	sum=$(timeout 10 nc %[1]s %[2]s | sha256sum)
	case $sum in %[3]s*) break;; esac
	sleep 1
done
echo "GOPASST-AFTER $sum"
echo GOPASST-DONE
`, hostGW, port(down.Addr()), want)
	initrd := filepath.Join(w.Dir, "initrd.cpio")
	if err := buildInitramfs(initrd, kver, script, nil); err != nil {
		t.Fatal(err)
	}
	report := bootGuest(t, w, qemu, kernel, initrd, 256, func(k string) {
		if k == "RESTART" {
			w.Restart(t)
		}
	})
	if lease := strings.Join(report["LEASE"], ""); !strings.Contains(lease, "mtu=1500") {
		t.Errorf("lease %q: want the guest at MTU 1500", lease)
	}
	for _, k := range []string{"BEFORE", "AFTER"} {
		if got := strings.Join(report[k], ""); !strings.HasPrefix(got, want) {
			t.Errorf("download %s the restart: sha256 %q, want %s", strings.ToLower(k), got, want)
		}
	}
	if n := strings.Count(w.Log.String(), "client connected"); n < 2 {
		t.Errorf("QEMU connected %d times, want a reconnection", n)
	}
}
