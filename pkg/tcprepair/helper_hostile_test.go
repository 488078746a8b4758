package tcprepair

import (
	"bytes"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Whatever connects to the back-end's repair socket is its helper, and
// may be anyone who can reach the path: the client must not wait on it
// for ever, nor for as many timeouts as a migration has messages.

// hostileHelper is the far end of a client's connection, played by the
// test, and the sockets a migration would pass (not TCP ones need not
// be: the helper here sets nothing).
func hostileHelper(t *testing.T) (c *Client, helper int, fds []int) {
	t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c = NewClient(sp[0])
	t.Cleanup(func() { c.Close(); unix.Close(sp[1]) })
	for range MaxFds {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		fds = append(fds, fd)
	}
	return c, sp[1], fds
}

// within runs f, which must end: the test fails rather than hang.
func within(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		t.Fatalf("%s: the client still waits on its helper after a minute", what)
		return nil
	}
}

// TestClientHostileHelper: a helper that queued its answers ahead and
// never reads (the messages then fill the socket, and a blocking send
// waited for ever), one that never answers, and one that answers each
// message just in time: the client gives up, with an error, once the
// helper has had the time it was allowed in all.
func TestClientHostileHelper(t *testing.T) {
	defer func(d time.Duration) { replyTimeout = d }(replyTimeout)
	replyTimeout = 200 * time.Millisecond
	t.Run("answers ahead, never reads", func(t *testing.T) {
		c, helper, fds := hostileHelper(t)
		unix.SetNonblock(helper, true)
		unix.Write(helper, bytes.Repeat([]byte{byte(On)}, 1<<16))
		err := within(t, "messages never read", func() error {
			for range 2000 {
				if err := c.Set(On, fds); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			t.Fatal("2000 messages never read taken as answered")
		}
		t.Log(err)
	})
	t.Run("never answers", func(t *testing.T) {
		c, _, fds := hostileHelper(t)
		if err := within(t, "no answer", func() error { return c.Set(On, fds) }); err == nil {
			t.Fatal("no answer taken for one")
		}
	})
	t.Run("answers each message just in time", func(t *testing.T) {
		c, helper, fds := hostileHelper(t)
		// The helper ends before the test closes its socket: a number
		// reused by a later test's socket would be read and written.
		ended := make(chan struct{})
		defer func() { unix.Shutdown(c.fd, unix.SHUT_RDWR); <-ended }()
		go func() {
			defer close(ended)
			var b [1]byte
			oob := make([]byte, unix.CmsgSpace(4*MaxFds))
			for {
				n, oobn, _, _, err := unix.Recvmsg(helper, b[:], oob, unix.MSG_CMSG_CLOEXEC)
				if n <= 0 || err != nil {
					return
				}
				if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
					for i := range cms {
						got, _ := unix.ParseUnixRights(&cms[i])
						for _, fd := range got {
							unix.Close(fd)
						}
					}
				}
				time.Sleep(replyTimeout / 4)
				unix.Write(helper, b[:])
			}
		}()
		c.Begin()
		many := make([]int, 0, 20*MaxFds)
		for range 20 {
			many = append(many, fds...)
		}
		if err := within(t, "slow answers", func() error { return c.Set(On, many) }); err == nil {
			t.Fatal("20 answers, each a quarter of the time allowed in all, all taken")
		}
	})
	t.Run("answers with descriptors", func(t *testing.T) {
		c, helper, fds := hostileHelper(t)
		self, _ := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		defer unix.Close(self)
		base := countFds(t)
		unix.Sendmsg(helper, []byte{byte(On)}, unix.UnixRights(self, self, self), nil, 0)
		if err := c.Set(On, fds[:1]); err != nil {
			t.Fatal(err)
		}
		if n := countFds(t); n != base {
			t.Errorf("%d descriptors open after an answer that carried 3, %d before", n, base)
		}
	})
}

func countFds(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

// TestClientPasstRepairControlLength plays upstream passt-repair, which
// receives each message with the control buffer's length that the one
// before left: the kernel drops the descriptors past it. Every socket
// must still reach the helper, in requests that grow and shrink, sent
// ahead of their answers as a migration's destination sends them, and
// every message must carry MaxFds descriptors (the rest the client's
// filling socket), or they would shrink for good.
func TestClientPasstRepairControlLength(t *testing.T) {
	c, helper, fds := hostileHelper(t)
	got := make(chan int, 1)
	go func() {
		oob := make([]byte, unix.CmsgSpace(4*MaxFds))
		ctl, total := len(oob), 0
		for {
			var cmd [1]byte
			n, oobn, _, _, err := unix.Recvmsg(helper, cmd[:], oob[:ctl], unix.MSG_CMSG_CLOEXEC)
			if err != nil || n == 0 {
				got <- total
				return
			}
			ctl = oobn // passt-repair never sets msg_controllen again
			received, _ := parseRights(oob[:oobn])
			if len(received) != MaxFds {
				total = -len(received)
			}
			for _, fd := range received {
				var st unix.Stat_t
				if unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT != unix.S_IFSOCK && total >= 0 {
					total++ // the test's sockets are eventfds
				}
				unix.Close(fd)
			}
			unix.Write(helper, cmd[:])
		}
	}()
	sent := 0
	for _, n := range []int{MaxFds, 7, MaxFds, 3, 40, MaxFds} {
		if err := c.Send(On, fds[:n]); err != nil {
			t.Fatal(err)
		}
		sent += n
	}
	if err := within(t, "answers", c.WaitAll); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if total := <-got; total < 0 {
		t.Errorf("a message carried %d descriptors, not %d", -total, MaxFds)
	} else if total != sent {
		t.Errorf("the helper had %d of %d sockets", total, sent)
	}
}
