package tests

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestCmdForwardMax: a guest cannot fill the host with processes through
// a command forward (issue 22 item 10). Past --cmd-fwd-max instances of
// the command, a new connection is reset; once one ends, another starts.
func TestCmdForwardMax(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"--cmd-fwd", "7000:cat", "--cmd-fwd-max", "2"}})
	addr := net.JoinHostPort(hostGW, "7000")
	var conns []net.Conn
	for range 2 {
		c := w.guestConn(t, addr)
		c.Write([]byte("up\n"))
		buf := make([]byte, 3)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "up\n" {
			t.Fatalf("command %d: %q, %v", len(conns)+1, buf, err)
		}
		conns = append(conns, c)
	}
	if c, err := w.Guest.Dial("tcp", addr, 5*time.Second); err == nil {
		c.Close()
		t.Fatal("a third instance of the command started")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("the third connection: %v, want a reset", err)
	}
	conns[0].Close()
	waitFor(t, "a command to start once one ended", func() bool {
		c, err := w.Guest.Dial("tcp", addr, 5*time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}
