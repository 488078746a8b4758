package tests

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestSoakVhostUser runs the soak's workload (TestSoak) in a real QEMU
// guest on gopasst's vhost-user back-end, for GOPASST_SOAK: the guest's
// agent (tests/cmd/soakguest) runs each exchange the test sends it over
// a virtio-serial port, outside the network under test. Every four
// minutes or so (three times at least), the vhost-user connection is cut
// between QEMU and gopasst (vhostProxy): QEMU reconnects to the same engine, which must
// let go of the guest's memory, rings and flows each time. Then the
// engine is checked as in TestSoak, and for its mappings of the guest's
// memory, back to those of one guest.
func TestSoakVhostUser(t *testing.T) {
	d := soakDuration(t)
	qemu, kernel, kver := needQEMU(t)
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--vhost-user", "--mtu", soakMTU, "--control", "{dir}/ctl",
		"-t", fmt.Sprintf("%d:%d", soakFwd, soakGuestPort), "-u", fmt.Sprintf("%d:%d", soakFwd+1, soakGuestPort+1)}})
	w.VhostUser = true
	proxy := newVhostProxy(t, filepath.Join(w.Dir, "proxy.socket"), w.Sock)
	qw := *w // QEMU's view: the proxy's socket
	qw.Sock = proxy.path

	agentPath := filepath.Join(w.Dir, "agent.socket")
	agentL, err := net.Listen("unix", agentPath)
	if err != nil {
		t.Fatal(err)
	}
	defer agentL.Close()
	agentBin := buildForGuest(t, w.Dir, "./cmd/soakguest")
	script := fmt.Sprintf(guestDHCPScript+`ip link set lo up
ip link set eth0 up
RESOLV=/etc/resolv.conf udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /etc/dhcp.sh -O mtu
for i in $(seq 60); do ip -6 route | grep -q ^default && ip -6 addr show eth0 scope global | grep -q inet6 && break; sleep 1; done
sleep 2 # duplicate address detection
ip -6 addr show dev eth0 | sed 's/^/GOPASST-ADDR6 /'
for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name)" = soak ] && port=/dev/${p##*/}; done
echo "GOPASST-AGENT $port"
/bin/soakguest $port %d 2>&1 | sed 's/^/GOPASST-AGENTLOG /'
echo GOPASST-DONE
`, soakGuestPort)
	initrd := filepath.Join(w.Dir, "initrd.cpio")
	if err := buildInitramfs(initrd, kver, script, map[string]string{"/bin/soakguest": agentBin}, "virtio_console"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d+20*time.Minute)
	defer cancel()
	report := &guestReport{keys: map[string][]string{}}
	startQEMU(ctx, t, qemu, kernel, initrd, &qw, filepath.Join(w.Dir, "qmp.socket"), "", report,
		"-device", "virtio-serial-pci,romfile=", "-chardev", "socket,id=agent,path="+agentPath,
		"-device", "virtserialport,chardev=agent,name=soak")
	defer func() {
		if t.Failed() {
			t.Logf("QEMU console:\n%s", report.console())
		}
	}()
	agent := dialSoakAgent(t, agentL)

	r := &soakRig{host: w.Host, helper: w.Proc.Process.Pid, engine: w.ServerPid(t), ctl: filepath.Join(w.Dir, "ctl"),
		guestDo: agent.do, bulk: 8 << 20, reconnect: func(t *testing.T) {
			n := strings.Count(w.Log.String(), "client connected")
			proxy.cut()
			if !pollUntil(time.Minute, func() bool { return strings.Count(w.Log.String(), "client connected") > n }) {
				t.Errorf("QEMU did not reconnect in a minute")
			}
		}}
	r.guestDiag = func() string {
		socks, err := agent.do("exec netstat -tn")
		stats, err2 := agent.do("exec cat /proc/net/dev /proc/net/snmp /proc/net/netstat")
		return fmt.Sprintf("the guest's sockets (%v):\n%s\nits links and counters (%v):\n%s", err, socks, err2, stats)
	}
	r.soak(t, d)
	if n := strings.Count(w.Log.String(), "client connected"); n < len(r.cuts)+1 {
		t.Errorf("QEMU connected %d times, want %d: once, and again after each of %d cuts", n, len(r.cuts)+1, len(r.cuts))
	}
}

// soakAgent sends ops to the guest's agent and waits for their answers.
type soakAgent struct {
	c    net.Conn
	mu   sync.Mutex
	next int
	wait map[int]chan [2]string
}

// dialSoakAgent takes QEMU's connection to the agent's port, from l,
// and waits until the agent is ready.
func dialSoakAgent(t *testing.T, l net.Listener) *soakAgent {
	t.Helper()
	var c net.Conn
	accepted := make(chan error, 1)
	go func() {
		var err error
		c, err = l.Accept()
		accepted <- err
	}()
	select {
	case err := <-accepted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("QEMU did not connect the agent's port")
	}
	t.Cleanup(func() { c.Close() })
	a := &soakAgent{c: c, wait: map[int]chan [2]string{0: make(chan [2]string, 1)}}
	go a.read()
	select {
	case ans := <-a.wait[0]:
		if ans[0] != "ok" {
			t.Fatalf("the agent: %v", ans)
		}
	case <-time.After(5 * time.Minute):
		t.Fatal("the guest's agent did not start in 5 minutes")
	}
	return a
}

func (a *soakAgent) read() {
	s := bufio.NewScanner(a.c)
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		f := strings.SplitN(s.Text(), " ", 3)
		if len(f) != 3 {
			continue
		}
		id, _ := strconv.Atoi(f[0])
		text, err := strconv.Unquote(f[2])
		if err != nil {
			text = f[2]
		}
		a.mu.Lock()
		ch := a.wait[id]
		delete(a.wait, id)
		a.mu.Unlock()
		if ch != nil {
			ch <- [2]string{f[1], text}
		}
	}
}

// do runs op in the guest (soak.Env.Run) and returns its output.
func (a *soakAgent) do(op string) (string, error) {
	a.mu.Lock()
	a.next++
	id := a.next
	ch := make(chan [2]string, 1)
	a.wait[id] = ch
	_, err := fmt.Fprintf(a.c, "%d %s\n", id, op)
	a.mu.Unlock()
	if err != nil {
		return "", err
	}
	select {
	case ans := <-ch:
		if ans[0] != "ok" {
			return "", errors.New(ans[1])
		}
		return ans[1], nil
	case <-time.After(5 * time.Minute):
		return "", fmt.Errorf("%s: no answer from the guest's agent in 5 minutes", op)
	}
}

// vhostProxy carries vhost-user messages between QEMU and gopasst's
// socket, each whole with the descriptors it came with, and cuts the
// connection on demand: QEMU then reconnects (reconnect-ms), which the
// engine takes as a new client.
type vhostProxy struct {
	path, backend string
	mu            sync.Mutex
	conns         []*net.UnixConn
}

func newVhostProxy(t *testing.T, path, backend string) *vhostProxy {
	p := &vhostProxy{path: path, backend: backend}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); p.cut() })
	go func() {
		for {
			front, err := l.AcceptUnix()
			if err != nil {
				return
			}
			back, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: backend, Net: "unix"})
			if err != nil {
				front.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, front, back)
			p.mu.Unlock()
			go vhostPump(front, back)
			go vhostPump(back, front)
		}
	}()
	return p
}

// cut closes every connection the proxy carries.
func (p *vhostProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// vhostPump carries messages from src to dst until either closes; then
// it closes both.
func vhostPump(src, dst *net.UnixConn) {
	defer src.Close()
	defer dst.Close()
	oob := make([]byte, syscall.CmsgSpace(4*32))
	var fds []int
	defer func() { closeAll(fds) }()
	// read fills b, keeping the descriptors that come with it.
	read := func(b []byte) error {
		for len(b) > 0 {
			n, oobn, _, _, err := src.ReadMsgUnix(b, oob)
			if oobn > 0 {
				cmsgs, _ := syscall.ParseSocketControlMessage(oob[:oobn])
				for _, m := range cmsgs {
					if got, err := syscall.ParseUnixRights(&m); err == nil {
						fds = append(fds, got...)
					}
				}
			}
			if err != nil {
				return err
			}
			if n == 0 {
				return io.EOF
			}
			b = b[n:]
		}
		return nil
	}
	for {
		hdr := make([]byte, 12)
		if read(hdr) != nil {
			return
		}
		msg := append(hdr, make([]byte, binary.LittleEndian.Uint32(hdr[8:]))...)
		if read(msg[12:]) != nil {
			return
		}
		var rights []byte
		if len(fds) > 0 {
			rights = syscall.UnixRights(fds...)
		}
		_, _, err := dst.WriteMsgUnix(msg, rights, nil)
		closeAll(fds)
		fds = fds[:0]
		if err != nil {
			return
		}
	}
}

func closeAll(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}
