//go:build hostileengine

package main

import (
	"bytes"
	"errors"
	"log"
	"os"
	"os/signal"
	"strings"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// A compromised engine, for tests only: tests/hostile_test.go builds
// gopasst with -tags hostileengine, which the release build never sets.
// Before ready and, sandboxed, after it, the engine sends the helper the
// requests of issue 22's review and logs each outcome as
// "hostile: NAME: refused: ERROR" or "hostile: NAME: SERVED". After
// ready it does it in two rounds, each ended by "round N done" and
// SIGUSR1 from the test, which counts the helper's descriptors between
// them. Then it dials the gateway ports 7000 and 7001 (the test makes
// them commands that print how they run), logs their output, and
// ignores the signals that would stop it.

func init() { hostileEngine = hostile }

func hostile(stage string, c *helperClient, l *log.Logger) {
	try := func(name string, err error) {
		if err != nil {
			l.Printf("hostile: %s: refused: %v", name, err)
		} else {
			l.Printf("hostile: %s: SERVED", name)
		}
	}
	if stage == "set-up" {
		d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		if err == nil && d == 0 {
			err = errors.New("not dumpable")
		}
		try("traced before the sandbox", err)
		hostileBinds(c, try)
		for _, port := range []uint16{6000, 7000} {
			fd, err := c.DialSpecial(port)
			closeFd(fd)
			try("dial before ready", err)
		}
		return
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, unix.SIGUSR1)
	for round := 1; round <= 2; round++ {
		hostileRound(c, try)
		l.Printf("hostile: round %d done", round)
		<-usr1
	}
	for _, port := range []uint16{7000, 7001} {
		fd, err := c.DialSpecial(port)
		if err != nil {
			l.Printf("hostile: command %d: %v", port, err)
			continue
		}
		unix.SetNonblock(fd, false)
		var out bytes.Buffer
		buf := make([]byte, 4096)
		for {
			n, err := unix.Read(fd, buf)
			if n <= 0 || err != nil {
				break
			}
			out.Write(buf[:n])
		}
		c.EndCommand(fd)
		unix.Close(fd)
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			l.Printf("hostile: command %d: %s", port, line)
		}
	}
	// Last, it stops hearing the signals that end it, as an engine held
	// in a system call would: the helper must still end it.
	signal.Ignore(stopSignals...)
	l.Printf("hostile: done")
}

// hostileBinds asks for listening sockets no forward configured.
func hostileBinds(c *helperClient, try func(string, error)) {
	for _, b := range []struct {
		proto slirp.Proto
		spec  string
	}{{slirp.TCP, "127.0.0.1/22222"}, {slirp.TCP, "22223"}, {slirp.UDP, "22224"}, {slirp.TCP, "80"}} {
		sp, _ := portspec.Parse(b.spec)
		fd, err := c.Bind(b.proto, sp.Forwards(nil)[0])
		closeFd(fd)
		try("bind "+string(b.proto)+" "+b.spec, err)
	}
	fd, err := c.Bind(slirp.TCP, portspec.Forward{})
	closeFd(fd)
	try("bind port 0", err)
}

func hostileRound(c *helperClient, try func(string, error)) {
	raw := func(name, msg string, fds ...int) {
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		c.mu.Lock()
		_, fd, err := c.exchange([]byte(msg), oob, 0)
		c.mu.Unlock()
		closeFd(fd)
		try(name, err)
	}
	raw("cmd argv", `{"Op":"cmd","Argv":["/bin/sh","-c","id > /tmp/gopasst-hostile-pwned"]}`)
	raw("unix path", `{"Op":"unix","Path":"/run/dbus/system_bus_socket"}`)
	raw("unix abstract", `{"Op":"unix","Path":"@/tmp/.X11-unix/X0"}`)
	raw("lookpath", `{"Op":"lookpath","Path":"/root/.ssh/id_rsa"}`)
	raw("garbage", `{"Op":`)
	raw("ready again", `{"Op":"ready"}`)
	raw("fail after ready", `{"Op":"fail","Msg":"x"}`)
	hostileBinds(c, try)
	fd, err := c.DialSpecial(7999)
	closeFd(fd)
	try("dial a port not diverted", err)
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		try("socket to pass", err)
		return
	}
	defer unix.Close(sock)
	many := make([]int, 253) // SCM_MAX_FD
	for i := range many {
		many[i] = sock
	}
	raw("empty with a descriptor", "", sock)
	for range 100 {
		raw("2 descriptors", `{"Op":"endcmd"}`, sock, sock)
		raw("253 descriptors", `{"Op":"endcmd"}`, many...)
	}
}
