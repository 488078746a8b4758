package main

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestControlPath: --control replaces only a stale socket; a file or a
// live socket at its path is an error and is left as it was.
func TestControlPath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "hosts")
	if err := os.WriteFile(file, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if l, err := listenControl(file); err == nil {
		l.Close()
		t.Fatal("--control on a regular file succeeded")
	} else if !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("error %q does not say why", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Fatalf("the file is now %q, %v", b, err)
	}

	live := filepath.Join(dir, "live")
	l, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if c, err := listenControl(live); err == nil {
		c.Close()
		t.Fatal("--control took over a live socket")
	}

	stale := filepath.Join(dir, "stale")
	sl, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	sl.(*net.UnixListener).SetUnlinkOnClose(false)
	sl.Close()
	c, err := listenControl(stale)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	c.Close()
}

// TestCtlRelay: the helper reads control requests itself. What an add
// allows goes into its table only while the engine accepts it; a remove
// takes it out; an engine whose answers are not JSON lines, or are
// endless, is not asked again.
func TestCtlRelay(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl")
	l, err := listenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	srv := &helperServer{}
	go newCtlRelay(l, os.NewFile(uintptr(ch[0]), "relay"), srv, &NetOptions{NoUDP: true, IPv4: true}).serve()
	engine := os.NewFile(uintptr(ch[1]), "engine")
	defer engine.Close()
	in := bufio.NewReader(engine)
	// answer plays the engine for one request.
	answer := func(resp []byte) {
		go func() {
			in.ReadBytes('\n')
			engine.Write(resp)
		}()
	}
	call := func(req ctlRequest) ctlResponse {
		t.Helper()
		resp, err := ctlCall(path, &req)
		if err != nil {
			t.Fatal(err)
		}
		return *resp
	}
	answer([]byte("{\"ok\":true}\n"))
	if r := call(ctlRequest{Op: "add", TCP: []string{"18080"}, CmdFwd: []string{"7000:cat"}}); !r.OK {
		t.Fatalf("add: %+v", r)
	}
	if len(srv.binds) != 1 || !srv.host.HasSpecial(7000) {
		t.Fatalf("after add: %v, port 7000 %v", srv.binds, srv.host.HasSpecial(7000))
	}
	answer([]byte("{\"ok\":false,\"error\":\"busy\"}\n"))
	if r := call(ctlRequest{Op: "add", TCP: []string{"18081"}, UnixFwd: []string{"6000:/x"}}); r.Error != "busy" {
		t.Fatalf("add the engine refused: %+v", r)
	}
	if len(srv.binds) != 1 || srv.host.HasSpecial(6000) {
		t.Fatalf("after a refused add: %v, port 6000 %v", srv.binds, srv.host.HasSpecial(6000))
	}
	// Refused as the command line refuses them (--no-udp, -4): the
	// engine is not asked.
	for _, req := range []ctlRequest{{Op: "add", UDP: []string{"5353"}}, {Op: "add", TCP: []string{"::1/18082"}}} {
		if r := call(req); !strings.Contains(r.Error, "disabled") {
			t.Fatalf("add of a forward turned off: %+v", r)
		}
	}
	// Refused by the helper: the engine is not asked.
	if r := call(ctlRequest{Op: "add", CmdFwd: []string{"7000:cat"}}); !strings.Contains(r.Error, "already diverted") {
		t.Fatalf("add of a diverted port: %+v", r)
	}
	if r := call(ctlRequest{Op: "chmod"}); !strings.Contains(r.Error, "unknown op") {
		t.Fatalf("unknown op: %+v", r)
	}
	answer([]byte("{\"ok\":true}\n"))
	if r := call(ctlRequest{Op: "remove", TCP: []string{"18080"}, CmdFwd: []string{"7000"}}); !r.OK {
		t.Fatalf("remove: %+v", r)
	}
	if len(srv.binds) != 0 || srv.host.HasSpecial(7000) {
		t.Fatalf("after remove: %v, port 7000 %v", srv.binds, srv.host.HasSpecial(7000))
	}
	answer(bytes.Repeat([]byte("x"), ctlMaxAnswer+(1<<20)))
	if r := call(ctlRequest{Op: "list"}); !strings.Contains(r.Error, "does not answer") {
		t.Fatalf("an endless answer: %+v", r)
	}
	if r := call(ctlRequest{Op: "list"}); !strings.Contains(r.Error, "does not answer") {
		t.Fatalf("after an endless answer: %+v", r)
	}
}

// TestControlPathAtSign: a --control path that begins with '@' is a file
// of mode 0600, as any other, where ctl finds it: not an abstract socket,
// which every local user could connect to and add commands through.
func TestControlPathAtSign(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	name := "@" + filepath.Base(filepath.Dir(dir))
	l, err := listenControl(name)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	st, err := os.Lstat(filepath.Join(dir, name))
	if err != nil || st.Mode() != os.ModeSocket|0o600 {
		t.Fatalf("control socket file %s: %v, %v", name, st, err)
	}
	go func() {
		if c, err := l.Accept(); err == nil {
			// The request first: closed with it unread, the socket
			// would fail ctl's write.
			bufio.NewReader(c).ReadString('\n')
			c.Write([]byte(`{"ok":true,"forwards":["here"]}` + "\n"))
			c.Close()
		}
	}()
	resp, err := ctlCall(name, &ctlRequest{Op: "list"})
	if err != nil || len(resp.Forwards) != 1 {
		t.Fatalf("ctl at %s: %v, %v", name, resp, err)
	}
}
