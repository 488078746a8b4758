package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// newHelperPair serves a helper on one end of a socket pair and returns a
// client on the other. The helper's onReady does nothing here.
func newHelperPair(t *testing.T, srv *helperServer) *helperClient {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	srv.fd = pair[0]
	if srv.onReady == nil {
		srv.onReady = func() error { return nil }
	}
	if srv.onFail == nil {
		srv.onFail = func(string) {}
	}
	done := make(chan struct{})
	go func() { srv.serve(); close(done) }()
	t.Cleanup(func() { unix.Close(pair[1]); <-done; unix.Close(pair[0]) })
	return newHelperClient(pair[1])
}

// rawCall sends msg with the descriptors fds, as a compromised engine
// could, and returns the helper's answer.
func rawCall(t *testing.T, c *helperClient, msg string, fds ...int) error {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_, fd, err := c.exchange([]byte(msg), oob, 0)
	closeFd(fd)
	return err
}

// freePort is a TCP port nothing listens on now.
func freePort(t *testing.T) uint16 {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no loopback here: %v", err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// TestHelperRefuses: the helper does only what its own table allows,
// whatever the engine asks (issue 22 items 1-3 and 9): no argv, no path,
// no forward that was not configured, no unix socket or command before
// ready, no second "ready".
func TestHelperRefuses(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	srv := &helperServer{}
	if err := srv.allow(&ctlRequest{TCP: []string{"127.0.0.1/" + strconv.Itoa(int(port))},
		UnixFwd: []string{"6000:" + filepath.Join(dir, "agent")}, CmdFwd: []string{"7000:true"}}); err != nil {
		t.Fatal(err)
	}
	c := newHelperPair(t, srv)
	want := func(what string, err error, text string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), text) {
			t.Errorf("%s: %v, want %q", what, err, text)
		}
	}
	_, err := c.DialSpecial(7000)
	want("a command before ready", err, "before the engine is ready")
	_, err = c.DialSpecial(6000)
	want("a unix socket before ready", err, "before the engine is ready")
	if err := c.ready(); err != nil {
		t.Fatal(err)
	}
	want("ready again", c.ready(), "ready already")
	for _, req := range []string{
		`{"Op":"cmd","Argv":["/bin/sh","-c","touch ` + dir + `/pwned"]}`,
		`{"Op":"unix","Path":"/run/dbus/system_bus_socket"}`,
		`{"Op":"unix","Path":"@abstract"}`,
		`{"Op":"lookpath","Path":"/root/.ssh/id_rsa"}`,
		`{"Op":"format-disk"}`,
	} {
		want(req, rawCall(t, c, req), "unknown request")
	}
	want("garbage", rawCall(t, c, "{"), "bad request")
	_, err = c.DialSpecial(7999)
	want("a port not diverted", err, "not diverted")
	for _, f := range []struct {
		proto slirp.Proto
		fwd   string
	}{{slirp.TCP, "127.0.0.1/22222"}, {slirp.TCP, "22223"}, {slirp.UDP, "22224"}, {slirp.TCP, "80"},
		{slirp.UDP, strconv.Itoa(int(port))}, {slirp.TCP, strconv.Itoa(int(port))}} {
		sp, err := portspec.Parse(f.fwd)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Bind(f.proto, sp.Forwards(nil)[0])
		want(string(f.proto)+" "+f.fwd, err, "not a configured forward")
	}
	_, err = c.Bind(slirp.TCP, portspec.Forward{})
	want("port 0", err, "not a configured forward")
	if _, err := os.Stat(filepath.Join(dir, "pwned")); err == nil {
		t.Error("the helper ran the engine's argv")
	}
	// What was configured is served.
	sp, _ := portspec.Parse("127.0.0.1/" + strconv.Itoa(int(port)))
	fd, err := c.Bind(slirp.TCP, sp.Forwards(nil)[0])
	if err != nil {
		t.Fatalf("the configured forward: %v", err)
	}
	unix.Close(fd)
	fd, err = c.DialSpecial(7000)
	if err != nil {
		t.Fatalf("the configured command: %v", err)
	}
	c.EndCommand(fd)
	unix.Close(fd)
}

// TestHelperFds: descriptors that come with a request are closed, however
// many (issue 22 item 7): the helper makes room for none, and refuses the
// request.
func TestHelperFds(t *testing.T) {
	c := newHelperPair(t, &helperServer{})
	count := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skip(err)
		}
		return len(ents)
	}
	one, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(one)
	many := make([]int, 253) // SCM_MAX_FD
	for i := range many {
		many[i] = one
	}
	before := count()
	for range 200 {
		if err := rawCall(t, c, `{"Op":"endcmd"}`, one, one); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("a request with 2 descriptors: %v", err)
		}
		if err := rawCall(t, c, `{"Op":"endcmd"}`, many...); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("a request with 253 descriptors: %v", err)
		}
		if err := rawCall(t, c, "", one); err == nil || !strings.Contains(err.Error(), "bad request") {
			t.Fatalf("an empty request with a descriptor: %v", err)
		}
	}
	// Earlier tests' commands may still be closing theirs: fewer is fine.
	if after := count(); after > before {
		t.Errorf("%d descriptors open before, %d after", before, after)
	}
}

// TestHelperAllow: the table takes what the command line and the control
// socket configure, all or nothing, and gives it back on revoke.
func TestHelperAllow(t *testing.T) {
	srv := &helperServer{}
	if err := srv.allow(&ctlRequest{CmdFwd: []string{"7000:/nonexistent/cmd"}}); err == nil {
		t.Error("a command that does not exist was allowed")
	}
	if err := srv.allow(&ctlRequest{CmdFwd: []string{"7000:sh -c 'unterminated"}}); err == nil {
		t.Error("an unterminated quote was allowed")
	}
	if err := srv.allow(&ctlRequest{TCP: []string{"8080"}, UnixFwd: []string{"6000:/a", "6000:/b"}}); err == nil {
		t.Error("a port diverted twice in one request was allowed")
	}
	if len(srv.binds) != 0 || srv.host.HasSpecial(6000) {
		t.Errorf("a failed request left %v, port 6000 %v", srv.binds, srv.host.HasSpecial(6000))
	}
	undo, err := srv.allowUndo(&ctlRequest{TCP: []string{"8080"}, CmdFwd: []string{"7000:cat"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.allow(&ctlRequest{UnixFwd: []string{"7000:/a"}}); err == nil {
		t.Error("a port already diverted was diverted again")
	}
	undo()
	if len(srv.binds) != 0 || srv.host.HasSpecial(7000) {
		t.Errorf("undo left %v, port 7000 %v", srv.binds, srv.host.HasSpecial(7000))
	}
	req := &ctlRequest{TCP: []string{"8080"}, CmdFwd: []string{"7000:cat"}}
	if err := srv.allow(req); err != nil {
		t.Fatal(err)
	}
	srv.revoke(&ctlRequest{TCP: []string{"8080"}, CmdFwd: []string{"7000"}})
	if len(srv.binds) != 0 || srv.host.HasSpecial(7000) {
		t.Errorf("revoke left %v, port 7000 %v", srv.binds, srv.host.HasSpecial(7000))
	}
}

// TestHelperCmdMax: past --cmd-fwd-max instances of one command, the
// helper refuses to start another (issue 22 item 10); the engine answers
// the guest with a RST.
func TestHelperCmdMax(t *testing.T) {
	srv := &helperServer{cmdMax: 2}
	if err := srv.allow(&ctlRequest{CmdFwd: []string{"7000:sleep 60", "7001:sleep 60"}}); err != nil {
		t.Skip(err)
	}
	c := newHelperPair(t, srv)
	if err := c.ready(); err != nil {
		t.Fatal(err)
	}
	var fds []int
	defer func() {
		for _, fd := range fds {
			c.EndCommand(fd)
			unix.Close(fd)
		}
	}()
	for range 2 {
		fd, err := c.DialSpecial(7000)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	if fd, err := c.DialSpecial(7000); err == nil || !strings.Contains(err.Error(), "already running") {
		closeFd(fd)
		t.Fatalf("a third command: %v", err)
	}
	// The cap is per forward.
	fd, err := c.DialSpecial(7001)
	if err != nil {
		t.Fatalf("another forward's command: %v", err)
	}
	fds = append(fds, fd)
	// Once one has exited, another may start.
	c.EndCommand(fds[0])
	unix.Close(fds[0])
	fds = fds[1:]
	deadline := time.Now().Add(10 * time.Second)
	for {
		fd, err := c.DialSpecial(7000)
		if err == nil {
			fds = append(fds, fd)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no command after one exited: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRunAsRoot: --runas never makes the engine, or the helper's serving
// thread, root (issue 22 item 9).
func TestRunAsRoot(t *testing.T) {
	for _, runas := range []string{"0", "root", "0:0", "65534:0", "root:65534"} {
		if id, err := runAsIdentity(runas); err == nil {
			t.Errorf("--runas %s: accepted as %+v", runas, id)
		}
	}
}

// FuzzHelperRequest: whatever a compromised engine sends, the helper
// answers it and goes on, and binds nothing but the configured forward.
func FuzzHelperRequest(f *testing.F) {
	for _, s := range []string{`{"Op":"bind","Proto":"tcp","Fwd":{"HostPort":22222}}`, `{"Op":"dial","Port":6000}`,
		`{"Op":"endcmd","ID":1}`, `{"Op":"ready"}`, `{"Op":"fail","Msg":"x"}`, `{"Op":"cmd","Argv":["/bin/true"]}`, `{`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) == 0 {
			return // on a SOCK_SEQPACKET socket, the same as the engine's end closing
		}
		srv := &helperServer{}
		if err := srv.allow(&ctlRequest{UnixFwd: []string{"6000:/nonexistent/gopasst-fuzz.sock"}}); err != nil {
			t.Fatal(err)
		}
		c := newHelperPair(t, srv)
		if err := unix.Sendmsg(c.fd, msg, nil, nil, 0); err != nil {
			t.Fatal(err)
		}
		_, fd, err := c.receive() // whatever its Seq
		closeFd(fd)
		if err != nil && strings.HasPrefix(err.Error(), "helper: ") {
			t.Fatalf("%q: no answer: %v", msg, err)
		}
		if fd >= 0 {
			t.Errorf("%q: the helper handed over a descriptor", msg)
		}
	})
}

// FuzzCtlAllow: a control request the helper reads either fails and
// changes nothing, or goes into the table and comes out again.
func FuzzCtlAllow(f *testing.F) {
	for _, s := range []string{`{"op":"add","tcp":["8080:80"],"udp":["53"],"unix_fwd":["6000:/tmp/x"],"cmd_fwd":["7000:cat"]}`,
		`{"op":"add","cmd_fwd":["7000:sh -c 'echo \"a b\"'"]}`, `{"op":"add","unix_fwd":["6000:/a","6000:/b"]}`,
		`{"op":"add","tcp":["127.0.0.1%lo/2000-2010,~2005"]}`, `{"op":"remove","cmd_fwd":["7000"]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		var req ctlRequest
		if json.Unmarshal(msg, &req) != nil {
			return
		}
		srv := &helperServer{}
		undo, err := srv.allowUndo(&req)
		if err == nil {
			undo()
		}
		if len(srv.binds) != 0 {
			t.Errorf("%q: %d forwards left in the table", msg, len(srv.binds))
		}
		for p := range 65536 {
			if srv.host.HasSpecial(uint16(p)) {
				t.Fatalf("%q: gateway port %d left diverted", msg, p)
			}
		}
	})
}

// TestHelperEndCmdAfterLeaderExits: a command that left a child behind
// and exited is not forgotten by the helper while the child lives, so
// the end of its connection still stops the child (slirp.Command.Stop),
// though another connection came meanwhile.
func TestHelperEndCmdAfterLeaderExits(t *testing.T) {
	srv := &helperServer{}
	if err := srv.allow(&ctlRequest{CmdFwd: []string{"7000:sh -c 'sleep 600 & echo $$ $!'"}}); err != nil {
		t.Skip(err)
	}
	c := newHelperPair(t, srv)
	if err := c.ready(); err != nil {
		t.Fatal(err)
	}
	dial := func() (fd, leader, child int) {
		fd, err := c.DialSpecial(7000)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		var pids [2]int
		unix.SetNonblock(fd, false)
		buf := make([]byte, 64)
		n, err := unix.Read(fd, buf) // one line, one write
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Sscan(string(buf[:n]), &pids[0], &pids[1]); err != nil {
			t.Fatalf("the command's pids: %q: %v", buf[:n], err)
		}
		t.Cleanup(func() { unix.Kill(pids[1], unix.SIGKILL) })
		return fd, pids[0], pids[1]
	}
	gone := func(pid int) bool {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		return err != nil || strings.Contains(string(stat), ") Z ")
	}
	fd, leader, child := dial()
	waitUntil := func(what string, cond func() bool) {
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal(what)
			}
		}
	}
	waitUntil("the command did not exit", func() bool { _, err := os.Stat(fmt.Sprintf("/proc/%d", leader)); return err != nil })
	dial()
	c.EndCommand(fd)
	waitUntil("the child of an exited command still runs 10 s after its connection ended", func() bool { return gone(child) })
}

// TestHelperUnixFwdReachable: a --unix-fwd socket that the engine's user
// may not connect to is refused when configured, with what to do, rather
// than every guest connection to it being refused later; one that does
// not exist yet is allowed.
func TestHelperUnixFwdReachable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run the engine as nobody")
	}
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755) // t.TempDir's parent, made 0700
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.Chmod(sock, 0o755)
	srv := &helperServer{id: &identity{65534, 65534}}
	err = srv.allow(&ctlRequest{UnixFwd: []string{"6000:" + sock}})
	if err == nil || !strings.Contains(err.Error(), "--runas") || srv.host.HasSpecial(6000) {
		t.Errorf("a socket nobody may not connect to: %v, port 6000 %v", err, srv.host.HasSpecial(6000))
	}
	os.Chmod(sock, 0o777)
	if err := srv.allow(&ctlRequest{UnixFwd: []string{"6000:" + sock, "6001:" + filepath.Join(dir, "later.sock")}}); err != nil {
		t.Errorf("a socket nobody may connect to, or one not there yet: %v", err)
	}
}
