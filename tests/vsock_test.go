package tests

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// TestVsockGuest runs the vsock transport on a real kernel: inside the
// QEMU guest (Debian's kernel, whose vsock_loopback this machine's own
// kernel lacks), gopasst listens with --vsock in the guest's root network
// namespace, its network copied from eth0. Two child namespaces reach it
// over vsock CID 1: one through "gopasst guest", one through
// gvisor-tap-vsock's gvforwarder, unmodified. Each gets a lease, pings
// its gateway, moves data both ways to servers on the guest's loopback
// (checked with SHA-256), resolves a name, and serves a -t forward.
// The inner gopasst also runs TCP on a kernel without SO_PEEK_OFF.
func TestVsockGuest(t *testing.T) {
	qemu, kernel, kver := needQEMU(t)
	fwd, err := goInstall("github.com/containers/gvisor-tap-vsock/cmd/vm", gvisorTapVsock)
	if err != nil {
		t.Skip(err)
	}
	w := newWorld(t, WorldOpts{NoGuest: true})
	startDNS(t, w, "test.gopasst.example", [4]byte{203, 0, 113, 7})
	static := buildForGuest(t, w.Dir, "../cmd/gopasst")
	mktap := buildForGuest(t, w.Dir, "./cmd/mktap")

	const size = 2 << 20
	// The tap comes first for gvforwarder, as in WorldOpts.RelayTapFirst.
	relays := []struct{ tag, pre, argv, port string }{
		{"RELAY", "true", "gopasst guest --vsock 1:1024 --tap tap0", "8090"},
		{"GVFWD", "mktap tap0 && ip link set tap0 up",
			"gvforwarder -url vsock://1:1025/connect -iface tap0 -preexisting -stop-if-exist ''", "8091"},
	}
	script := fmt.Sprintf(`
`+guestDHCPScript+`printf '#!/bin/sh\ncat /tmp/down.bin\n' > /bin/down
printf '#!/bin/sh\nhead -c %[1]d | sha256sum\n' > /bin/upsum
printf '#!/bin/sh\necho hello-from-child\n' > /bin/hello
chmod +x /bin/down /bin/upsum /bin/hello
echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range # ping sockets for the inner gopasst
ip link set lo up
ip link set eth0 up
RESOLV=/etc/resolv.conf udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /etc/dhcp.sh -O mtu
yes vsock | head -c %[1]d > /tmp/down.bin
nc -ll -p 7000 -e /bin/down &
nc -ll -p 7001 -e /bin/upsum &
# wait for SLAAC, so the inner gopasst always runs IPv6 and sends a new guest its first RA
for i in $(seq 100); do ip -6 route | grep -q ^default && ip -6 addr show eth0 scope global | grep -q inet6 && break; sleep 0.1; done
gopasst --vsock 1024 -f -t 18090:8090 > /tmp/vsock-1024.log 2>&1 &
gopasst --vsock 1025 -f -t 18091:8091 > /tmp/vsock-1025.log 2>&1 &
# each listens before it logs its MTU
for i in $(seq 100); do grep -q ': MTU' /tmp/vsock-1024.log && grep -q ': MTU' /tmp/vsock-1025.log && break; sleep 0.1; done
child() {
cat > /tmp/child-$1.sh <<EOS
ip link set lo up
{ $4; } 2>&1 | sed 's/^/GOPASST-$1-PRE /'
$2 > /tmp/relay-$1.log 2>&1 &
for i in \$(seq 100); do ip link show tap0 > /dev/null 2>&1 && break; sleep 0.1; done
ip link set tap0 up
TAG=$1- udhcpc -i tap0 -f -q -n -t 10 -T 2 -s /etc/dhcp.sh -O mtu
gw=\$(ip route | sed -n 's/^default via \([^ ]*\).*/\1/p')
ping -c 2 -W 5 \$gw | sed 's/^/GOPASST-$1-PING /'
echo "GOPASST-$1-DOWN \$(nc \$gw 7000 | sha256sum)"
echo "GOPASST-$1-UP \$(yes up | head -c %[1]d | nc \$gw 7001)"
nslookup test.gopasst.example \$gw | sed 's/^/GOPASST-$1-DNS /'
nc -l -p $3 -e /bin/hello &
# ready only once it listens: a probe before that would be refused
listening t $3
touch /tmp/ready-$1
while [ ! -e /tmp/probed-$1 ]; do sleep 0.1; done
EOS
unshare -n sh /tmp/child-$1.sh &
pid=$!
for i in $(seq 600); do [ -e /tmp/ready-$1 ] && break; sleep 0.1; done
echo "GOPASST-$1-FWD $(nc 127.0.0.1 1$3)"
touch /tmp/probed-$1
wait $pid
sed "s/^/GOPASST-$1-LOG /" /tmp/relay-$1.log
}
child %[2]s "%[3]s" %[4]s "%[5]s"
child %[6]s "%[7]s" %[8]s "%[9]s"
sed 's/^/GOPASST-INNER /' /tmp/vsock-1024.log /tmp/vsock-1025.log
dmesg | grep 'type=1326' | sed 's/^/GOPASST-INNER seccomp: /'
echo GOPASST-DONE
`, size, relays[0].tag, relays[0].argv, relays[0].port, relays[0].pre,
		relays[1].tag, relays[1].argv, relays[1].port, relays[1].pre)
	initrd := filepath.Join(w.Dir, "initrd.cpio")
	err = buildInitramfs(initrd, kver, script, map[string]string{"/bin/gopasst": static, "/bin/gvforwarder": fwd, "/bin/mktap": mktap},
		"vsock_loopback", "tun")
	if err != nil {
		t.Fatal(err)
	}
	report := bootGuest(t, w, qemu, kernel, initrd, 1024, func(string) {})

	sum := func(unit string) string {
		h := sha256.Sum256([]byte(strings.Repeat(unit, size/len(unit)+1)[:size]))
		return hex.EncodeToString(h[:])
	}
	for _, r := range relays {
		get := func(k string) string { return strings.Join(report[r.tag+"-"+k], "\n") }
		if p := get("PRE"); p != "" {
			t.Errorf("%s: making the tap: %s", r.tag, p)
		}
		if l := get("LEASE"); !strings.Contains(l, "ip="+hostAddr) || !strings.Contains(l, "router="+hostGW) {
			t.Errorf("%s: lease %q", r.tag, l)
		}
		if p := get("PING"); !strings.Contains(p, "2 packets received") {
			t.Errorf("%s: ping:\n%s", r.tag, p)
		}
		if d := get("DOWN"); !strings.HasPrefix(d, sum("vsock\n")) {
			t.Errorf("%s: download sha256 %q, want %s", r.tag, d, sum("vsock\n"))
		}
		if u := get("UP"); !strings.HasPrefix(u, sum("up\n")) {
			t.Errorf("%s: upload sha256 as the server saw it %q, want %s", r.tag, u, sum("up\n"))
		}
		if d := get("DNS"); !strings.Contains(d, "203.0.113.7") {
			t.Errorf("%s: nslookup:\n%s", r.tag, d)
		}
		if f := get("FWD"); f != "hello-from-child" {
			t.Errorf("%s: -t forward into the child: %q", r.tag, f)
		}
		if t.Failed() {
			t.Logf("%s relay log:\n%s", r.tag, get("LOG"))
		}
	}
	inner := strings.Join(report["INNER"], "\n")
	if strings.Count(inner, "our link-local: ") != 2 {
		t.Error("an inner gopasst runs without IPv6, so its first RA to a new guest went untested")
	}
	if t.Failed() {
		t.Logf("inner gopasst's log:\n%s", inner)
	}
	t.Logf("gvforwarder's lease: %s", strings.Join(report["GVFWD-LEASE"], ""))
}
