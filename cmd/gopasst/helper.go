package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// The helper is the half of gopasst that stays outside the sandbox: the
// process that started the engine. It does, on the engine's request, what
// the sandboxed engine cannot: bind forwarded ports (with the rights
// gopasst was started with, until the engine is ready), connect to host
// unix sockets and run commands (which need the host's file system). It
// answers over a SOCK_SEQPACKET socket pair, one JSON request and one
// reply at a time, with the descriptor passed as SCM_RIGHTS: the pattern
// of passt-repair. Once the engine is ready the helper runs as the same
// unprivileged user, and it refuses what the command line did not enable.

type helperRequest struct {
	Op    string // bind, unix, lookpath, cmd, endcmd, ready, fail
	Proto slirp.Proto
	Fwd   portspec.Forward
	Path  string
	Argv  []string
	ID    int
	Seq   uint64 // echoed in the reply
}

type helperReply struct {
	Errno syscall.Errno // the call's errno (EINPROGRESS comes with a descriptor)
	Err   string        // any other failure
	Path  string
	ID    int
	Seq   uint64
}

// helperTimeout bounds one request: the helper only binds, connects and
// starts processes, so a slower answer means it is gone.
const helperTimeout = 10 * time.Second

// helperClient is the engine's slirp.Host: every call is a request to
// the helper. Calls come from the event loop and, at start-up and for
// the control socket, from other goroutines; one runs at a time.
type helperClient struct {
	mu   sync.Mutex
	fd   int
	seq  uint64
	cmds map[int]int // our end of a command's socket -> the helper's ID
}

func newHelperClient(fd int) *helperClient {
	tv := unix.NsecToTimeval(helperTimeout.Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &helperClient{fd: fd, cmds: map[int]int{}}
}

// call sends req and returns the reply and the descriptor that came with
// it (-1 if none).
func (c *helperClient) call(req helperRequest) (helperReply, int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	req.Seq = c.seq
	msg, _ := json.Marshal(req)
	if err := retryEINTR(func() error { return unix.Sendmsg(c.fd, msg, nil, nil, 0) }); err != nil {
		return helperReply{}, -1, fmt.Errorf("helper: %w", err)
	}
	// A reply to an earlier request that timed out is skipped.
	for {
		r, fd, err := c.receive()
		if err != nil || r.Seq == req.Seq {
			return r, fd, err
		}
		closeFd(fd)
	}
}

// receive reads one reply and the descriptor that came with it (-1 if
// none).
func (c *helperClient) receive() (helperReply, int, error) {
	var buf [4096]byte
	n, fd, err := recvWithFd(c.fd, buf[:])
	if err == nil && n == 0 {
		err = errors.New("gone")
	}
	if err != nil {
		closeFd(fd)
		return helperReply{}, -1, fmt.Errorf("helper: %w", err)
	}
	var r helperReply
	if err := json.Unmarshal(buf[:n], &r); err != nil {
		closeFd(fd)
		return helperReply{}, -1, fmt.Errorf("helper: %w", err)
	}
	if r.Err != "" {
		closeFd(fd)
		return r, -1, errors.New(r.Err)
	}
	if r.Errno != 0 {
		return r, fd, r.Errno
	}
	return r, fd, nil
}

// recvWithFd receives one message into buf, and the descriptor passed
// with it as SCM_RIGHTS (-1 if none).
func recvWithFd(sock int, buf []byte) (n, fd int, err error) {
	oob := make([]byte, unix.CmsgSpace(4))
	var oobn int
	err = retryEINTR(func() (err error) {
		n, oobn, _, _, err = unix.Recvmsg(sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
		return err
	})
	fd = -1
	if cms, _ := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(cms) == 1 {
		if fds, _ := unix.ParseUnixRights(&cms[0]); len(fds) == 1 {
			fd = fds[0]
		}
	}
	return n, fd, err
}

// retryEINTR calls f until a signal (the Go runtime's preemption) does not
// interrupt it.
func retryEINTR(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}

func closeFd(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}

// fdCall is call for requests that return a descriptor.
func (c *helperClient) fdCall(req helperRequest) (int, error) {
	_, fd, err := c.call(req)
	if fd >= 0 {
		unix.SetNonblock(fd, true)
	} else if err == nil {
		err = errors.New("helper: no descriptor in reply")
	}
	return fd, err
}

func (c *helperClient) Bind(proto slirp.Proto, f portspec.Forward) (int, error) {
	return c.fdCall(helperRequest{Op: "bind", Proto: proto, Fwd: f})
}

func (c *helperClient) DialUnix(path string) (int, error) {
	return c.fdCall(helperRequest{Op: "unix", Path: path})
}

func (c *helperClient) LookPath(name string) (string, error) {
	r, _, err := c.call(helperRequest{Op: "lookpath", Path: name})
	return r.Path, err
}

func (c *helperClient) Command(argv []string) (int, error) {
	r, fd, err := c.call(helperRequest{Op: "cmd", Argv: argv})
	if err != nil {
		closeFd(fd)
		return -1, err
	}
	c.mu.Lock()
	c.cmds[fd] = r.ID
	c.mu.Unlock()
	unix.SetNonblock(fd, true)
	return fd, nil
}

func (c *helperClient) EndCommand(fd int) {
	c.mu.Lock()
	id, ok := c.cmds[fd]
	delete(c.cmds, fd)
	c.mu.Unlock()
	if ok {
		c.call(helperRequest{Op: "endcmd", ID: id})
	}
}

// ready tells the helper that set-up is over: it writes the PID file,
// drops its privileges and lets whoever started gopasst go on.
func (c *helperClient) ready() error {
	_, _, err := c.call(helperRequest{Op: "ready"})
	return err
}

// fail tells the helper why set-up failed, for whoever started gopasst.
func (c *helperClient) fail(msg string) {
	c.call(helperRequest{Op: "fail", Path: msg})
}

// helperServer answers the engine on fd until the engine closes it.
type helperServer struct {
	fd                  int
	host                slirp.LocalHost
	allowUnix, allowCmd bool
	onReady             func() error
	onFail              func(msg string)
	procs               map[int]*os.Process
	nextID              int
}

// serve answers on a thread of its own, which onReady makes the engine's
// user (dropThreadPrivileges): the goroutine never unlocks it.
func (s *helperServer) serve() {
	runtime.LockOSThread()
	s.procs = map[int]*os.Process{}
	var buf [64 << 10]byte
	for {
		n, stray, err := recvWithFd(s.fd, buf[:])
		closeFd(stray) // requests carry none
		if err != nil || n == 0 {
			break
		}
		var req helperRequest
		var r helperReply
		fd := -1
		if err := json.Unmarshal(buf[:n], &req); err != nil {
			r.Err = "bad request: " + err.Error()
		} else {
			r.Seq = req.Seq
			fd, err = s.handle(&req, &r)
			if errno, ok := err.(syscall.Errno); ok {
				r.Errno = errno
			} else if err != nil {
				r.Err = err.Error()
			}
		}
		msg, _ := json.Marshal(r)
		var oob []byte
		if fd >= 0 {
			oob = unix.UnixRights(fd)
		}
		retryEINTR(func() error { return unix.Sendmsg(s.fd, msg, oob, nil, 0) })
		closeFd(fd)
	}
	for _, p := range s.procs {
		p.Signal(unix.SIGTERM)
	}
}

func (s *helperServer) handle(req *helperRequest, r *helperReply) (int, error) {
	switch req.Op {
	case "bind":
		return s.host.Bind(req.Proto, req.Fwd)
	case "unix":
		if !s.allowUnix {
			return -1, errors.New("unix socket forwards are not enabled (--unix-fwd, --control)")
		}
		return s.host.DialUnix(req.Path)
	case "lookpath", "cmd":
		if !s.allowCmd {
			return -1, errors.New("command forwards are not enabled (--cmd-fwd, --control)")
		}
		if req.Op == "lookpath" {
			p, err := s.host.LookPath(req.Path)
			r.Path = p
			return -1, err
		}
		if len(req.Argv) == 0 {
			return -1, errors.New("empty command")
		}
		fd, p, err := slirp.StartCommand(req.Argv)
		if err == nil {
			s.nextID++
			r.ID = s.nextID
			s.procs[r.ID] = p
		}
		return fd, err
	case "endcmd":
		if p := s.procs[req.ID]; p != nil {
			p.Signal(unix.SIGTERM)
			delete(s.procs, req.ID)
		}
		return -1, nil
	case "ready":
		return -1, s.onReady()
	case "fail":
		s.onFail(req.Path)
		return -1, nil
	}
	return -1, fmt.Errorf("unknown request %q", req.Op)
}
