package tcprepair

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// The repair helper protocol, passt's (passt-repair.c, repair.c): the
// helper, which has CAP_NET_ADMIN, connects to the back-end's repair
// socket. Each message from the back-end is one command byte with 1 to
// MaxFds sockets as SCM_RIGHTS; the helper sets TCP_REPAIR to the command
// on each, closes its copies and echoes the byte. Any other answer, or
// none, means the helper failed. At EOF the helper exits.

// Commands: the values of TCP_REPAIR.
const (
	On      int8 = unix.TCP_REPAIR_ON
	Off     int8 = unix.TCP_REPAIR_OFF
	OffNoWP int8 = unix.TCP_REPAIR_OFF_NO_WP // off, without a window probe
)

// MaxFds is the most descriptors one message carries: the kernel's
// SCM_MAX_FD.
const MaxFds = 253

// replyTimeout is the time a helper has, in all, to take and answer the
// messages of one migration (Begin): it only makes setsockopt calls, so
// a slower one is stuck, gone, or not a helper at all.
var replyTimeout = 10 * time.Second

// Client is the back-end's end of a connection from a repair helper.
type Client struct {
	fd      int
	left    time.Duration // of the helper's time (Begin)
	pending []request     // sent and not yet answered, oldest first
}

// request is a Send: cmd, in msgs messages.
type request struct {
	cmd  int8
	msgs int
}

// NewClient talks to the helper connected on fd, a unix stream socket.
func NewClient(fd int) *Client {
	return &Client{fd: fd, left: replyTimeout}
}

// Begin gives the helper replyTimeout, in all, for the messages that
// follow: the back-end calls it as a migration starts. Whoever can reach
// the repair socket may be the helper, and one that answers each message
// just in time would otherwise hold the back-end for a timeout per
// message.
func (c *Client) Begin() { c.left = replyTimeout }

// Close ends the connection: the helper exits.
func (c *Client) Close() error { return unix.Close(c.fd) }

// Set has the helper set TCP_REPAIR to cmd on every socket of fds, and
// waits for its answers, those to requests sent before (Send) first.
func (c *Client) Set(cmd int8, fds []int) error {
	if err := c.Send(cmd, fds); err != nil {
		return err
	}
	return c.WaitAll()
}

// Send asks the helper to set TCP_REPAIR to cmd on every socket of fds
// and returns without its answer: the helper works while the back-end
// does, and Wait takes the answers in the order asked.
//
// Every message carries MaxFds descriptors, the last one's rest filled
// with a socket never connected, on which TCP_REPAIR changes nothing
// (and sends no window probe). Upstream passt-repair (2026.03) receives
// each message with the control buffer's length that the one before left
// (it never resets msg_controllen), so the descriptors of a larger
// message past that length would be dropped by the kernel, unseen, and
// their sockets never change mode; and messages that shrank for good
// would be many, each answered by a blocking send the helper makes
// while the back-end, sending, does not read. passt never sends a larger
// message after a smaller one.
func (c *Client) Send(cmd int8, fds []int) error {
	if len(fds) == 0 {
		return nil
	}
	spare := -1 // the filling socket: a message in flight holds it
	defer func() {
		if spare >= 0 {
			unix.Close(spare)
		}
	}()
	r := request{cmd: cmd}
	var msg [MaxFds]int
	for len(fds) > 0 {
		n := copy(msg[:], fds)
		if n < MaxFds && spare < 0 {
			s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("repair helper: a socket to fill messages: %w", err)
			}
			spare = s
		}
		for i := n; i < MaxFds; i++ {
			msg[i] = spare
		}
		// A helper that never reads, its answers sent ahead, fills the
		// socket with messages: the send waits within the helper's time
		// too.
		if err := c.wait(unix.POLLOUT, func() error {
			return unix.Sendmsg(c.fd, []byte{byte(cmd)}, unix.UnixRights(msg[:]...), nil, unix.MSG_DONTWAIT)
		}); err != nil {
			return fmt.Errorf("repair helper: %w", err)
		}
		r.msgs++
		fds = fds[n:]
	}
	c.pending = append(c.pending, r)
	return nil
}

// Wait waits for the answers to the oldest request sent and not
// answered.
func (c *Client) Wait() error {
	if len(c.pending) == 0 {
		return errors.New("repair helper: no request to answer")
	}
	r := c.pending[0]
	c.pending = c.pending[1:]
	for range r.msgs {
		var reply [1]byte
		var n int
		err := c.wait(unix.POLLIN, func() (err error) { n, _, err = unix.Recvfrom(c.fd, reply[:], unix.MSG_DONTWAIT); return err })
		switch {
		case err == errNoTime:
			return errors.New("repair helper: no answer")
		case err != nil:
			return fmt.Errorf("repair helper: %w", err)
		case n == 0:
			return errors.New("repair helper: gone (it could not set TCP_REPAIR: see its errors)")
		case int8(reply[0]) != r.cmd:
			return fmt.Errorf("repair helper: answered %d to %d", int8(reply[0]), r.cmd)
		}
	}
	return nil
}

// WaitAll waits for the answers to every request sent; the first
// failure is the result.
func (c *Client) WaitAll() error {
	var first error
	for len(c.pending) > 0 {
		if err := c.Wait(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// errNoTime reports a helper whose time is up.
var errNoTime = errors.New("no time left")

// wait runs op until it does not find the socket busy, waiting for
// events in between within what is left of the helper's time.
func (c *Client) wait(events int16, op func() error) error {
	for {
		err := op()
		if err != unix.EAGAIN && err != unix.EINTR {
			return err
		}
		if c.left <= 0 {
			return errNoTime
		}
		start := time.Now()
		_, err = unix.Poll([]unix.PollFd{{Fd: int32(c.fd), Events: events}}, int(c.left.Milliseconds())+1)
		c.left -= time.Since(start)
		if err != nil && err != unix.EINTR {
			return err
		}
	}
}

func retry(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}

// Serve is the helper: it answers the back-end on fd until the back-end
// closes it (nil) or asks something it cannot do (the error; the
// back-end sees the connection close, as with passt-repair).
func Serve(fd int) error {
	oob := make([]byte, unix.CmsgSpace(4*MaxFds))
	for {
		var cmd [1]byte
		var n, oobn int
		err := retry(func() (err error) {
			n, oobn, _, _, err = unix.Recvmsg(fd, cmd[:], oob, unix.MSG_CMSG_CLOEXEC)
			return err
		})
		if err == unix.ECONNRESET || err == nil && n == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading a request: %w", err)
		}
		fds, err := parseRights(oob[:oobn])
		if err == nil {
			err = setRepair(int8(cmd[0]), fds)
		}
		for _, s := range fds {
			unix.Close(s)
		}
		if err != nil {
			return err
		}
		if err := retry(func() error { _, err := unix.Write(fd, cmd[:]); return err }); err != nil {
			return fmt.Errorf("answering: %w", err)
		}
	}
}

// parseRights returns the descriptors of the one SCM_RIGHTS message oob
// must hold.
func parseRights(oob []byte) ([]int, error) {
	cms, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("bad ancillary data: %w", err)
	}
	var fds []int
	for _, cm := range cms {
		// Descriptors in any message are ours to close.
		if f, err := unix.ParseUnixRights(&cm); err == nil {
			fds = append(fds, f...)
		}
	}
	if len(cms) != 1 || len(fds) == 0 || len(fds) > MaxFds {
		return fds, fmt.Errorf("a request carries 1 to %d sockets, as one SCM_RIGHTS message", MaxFds)
	}
	return fds, nil
}

func setRepair(cmd int8, fds []int) error {
	switch cmd {
	case On, Off, OffNoWP:
	default:
		return fmt.Errorf("unknown command %d", cmd)
	}
	for _, s := range fds {
		if err := unix.SetsockoptInt(s, unix.SOL_TCP, unix.TCP_REPAIR, int(cmd)); err != nil {
			return fmt.Errorf("setting TCP_REPAIR to %d: %w", cmd, err)
		}
	}
	return nil
}
