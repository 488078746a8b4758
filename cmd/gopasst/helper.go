package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os/exec"
	"runtime"
	"strings"
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
// of passt-repair.
//
// The engine may be compromised, so the helper obeys only the command
// line and the control socket, which it serves itself (ctlRelay): it
// keeps its own table of the forwards they configured, binds only those,
// and knows where each diverted gateway port leads. The engine names a
// forward or a port, never a path or a command. Once the engine is ready,
// the helper serves it from a thread with no privileges at all
// (confineServingThread), and only then connects unix sockets and starts
// commands.

type helperRequest struct {
	Op    string // bind, dial, endcmd, ready, fail; pasta: nsbind, nsproc, nssplice
	Proto slirp.Proto
	Fwd   portspec.Forward
	Port  uint16 // dial: the diverted gateway port
	Msg   string // fail: why
	Table string // pasta's nsproc: tcp, tcp6, udp or udp6
	ID    int
	Seq   uint64 // echoed in the reply
}

type helperReply struct {
	Errno syscall.Errno // the call's errno (EINPROGRESS comes with a descriptor)
	Err   string        // any other failure
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
	return c.exchange(msg, nil, req.Seq)
}

// exchange sends msg, with the control message oob, and returns the reply
// numbered seq; c.mu is held. A reply to an earlier request that timed
// out is skipped.
func (c *helperClient) exchange(msg, oob []byte, seq uint64) (helperReply, int, error) {
	if err := retryEINTR(func() error { return unix.Sendmsg(c.fd, msg, oob, nil, 0) }); err != nil {
		return helperReply{}, -1, fmt.Errorf("helper: %w", err)
	}
	for {
		r, fd, err := c.receive()
		if err != nil || r.Seq == seq {
			return r, fd, err
		}
		closeFd(fd)
	}
}

// receive reads one reply and the descriptor that came with it (-1 if
// none).
func (c *helperClient) receive() (helperReply, int, error) {
	var buf [4096]byte
	n, fds, err := recvMsg(c.fd, buf[:], 1)
	switch {
	case err == errCtrunc:
		// The helper sends one descriptor at most: one that did not
		// fit is one the kernel could not install, past our limit.
		err = unix.EMFILE
	case err == nil && n == 0:
		err = errors.New("gone")
	}
	fd := -1
	if err == nil && len(fds) == 1 {
		fd, fds = fds[0], nil
	}
	closeFds(fds)
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

// errCtrunc is a message whose descriptors did not fit: the kernel
// closed those, and the message is refused.
var errCtrunc = errors.New("more descriptors than the message may carry")

// recvMsg receives one message into buf, with room for at most maxFds
// descriptors (SCM_RIGHTS). Every descriptor received is returned, for
// the caller to use or close: on error too. More than maxFds is
// errCtrunc.
func recvMsg(sock int, buf []byte, maxFds int) (n int, fds []int, err error) {
	return recvMsgVia(unix.Recvmsg, sock, buf, maxFds)
}

// recvMsgVia is recvMsg with recv in unix.Recvmsg's place.
func recvMsgVia(recv recvmsgFunc, sock int, buf []byte, maxFds int) (n int, fds []int, err error) {
	oob := make([]byte, unix.CmsgSpace(4*maxFds))
	var oobn, flags int
	err = retryEINTR(func() (err error) {
		n, oobn, flags, _, err = recv(sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
		return err
	})
	cms, _ := unix.ParseSocketControlMessage(oob[:oobn])
	for i := range cms {
		if f, e := unix.ParseUnixRights(&cms[i]); e == nil {
			fds = append(fds, f...)
		}
	}
	if err == nil && (flags&unix.MSG_CTRUNC != 0 || len(fds) > maxFds) {
		err = errCtrunc
	}
	return n, fds, err
}

type recvmsgFunc func(fd int, p, oob []byte, flags int) (n, oobn, recvflags int, from unix.Sockaddr, err error)

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

func closeFds(fds []int) {
	for _, fd := range fds {
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

func (c *helperClient) DialSpecial(port uint16) (int, error) {
	r, fd, err := c.call(helperRequest{Op: "dial", Port: port})
	if fd < 0 {
		if err == nil {
			err = errors.New("helper: no descriptor in reply")
		}
		return -1, err
	}
	if r.ID != 0 {
		c.mu.Lock()
		c.cmds[fd] = r.ID
		c.mu.Unlock()
	}
	unix.SetNonblock(fd, true)
	return fd, err
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
	c.call(helperRequest{Op: "fail", Msg: msg})
}

// helperServer answers the engine on fd until the engine closes it,
// from its own table of what the command line and the control socket
// configured (allow, revoke).
type helperServer struct {
	fd      int
	cmdMax  int       // --cmd-fwd-max
	id      *identity // the engine's user, whose rights --unix-fwd connects with
	onReady func() error
	onFail  func(msg string)
	ns      *pastaHelper // pasta's namespace side, or nil

	host  slirp.LocalHost // binds, and the table of diverted ports
	mu    sync.Mutex
	binds map[bindKey]bool // the forwards configured

	// Only serve's goroutine uses these.
	ready  bool
	procs  map[int]*slirp.Command
	nextID int
}

// bindKey is a forward the helper may bind.
type bindKey struct {
	proto slirp.Proto
	fwd   portspec.Forward
}

// serve answers on a thread of its own, which onReady confines
// (confineServingThread): the goroutine never unlocks it, so binds,
// connections and commands after ready come from that thread alone.
func (s *helperServer) serve() {
	runtime.LockOSThread()
	s.procs = map[int]*slirp.Command{}
	var buf [64 << 10]byte
	for {
		// Requests carry no descriptor: room for none, so the kernel
		// closes any that a request brings.
		n, fds, err := recvMsg(s.fd, buf[:], 0)
		closeFds(fds)
		// An empty message is the engine's end closing, unless it
		// came with descriptors.
		if (err != nil && err != errCtrunc) || (n == 0 && err == nil) {
			break
		}
		var req helperRequest
		var r helperReply
		fd, herr := -1, error(nil)
		if jerr := json.Unmarshal(buf[:n], &req); jerr != nil {
			r.Err = "bad request: " + jerr.Error()
		} else if r.Seq = req.Seq; err != nil {
			r.Err = "request refused: " + err.Error()
		} else {
			fd, herr = s.handle(&req, &r)
		}
		sendReply(s.fd, &r, fd, herr)
	}
	for _, p := range s.procs {
		p.Stop()
	}
}

// maxReplyErr bounds the message a reply carries, which may quote what
// the request held (an unknown op, a table's name): 6 bytes a byte at
// most in JSON, it fits the 4 KiB a reply is received into (receive),
// where a longer one was cut short and the request seemed unanswered.
const maxReplyErr = 512

// sendReply answers a request on sock with r, err recorded in it as an
// errno or a message, and fd (if any) passed along; fd is then closed:
// the peer has its own copy. The helper and pasta's agent answer alike.
func sendReply(sock int, r *helperReply, fd int, err error) {
	if errno, ok := err.(syscall.Errno); ok {
		r.Errno = errno
	} else if err != nil {
		msg := err.Error()
		r.Err = msg[:min(len(msg), maxReplyErr)]
	}
	msg, _ := json.Marshal(r)
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	retryEINTR(func() error { return unix.Sendmsg(sock, msg, oob, nil, 0) })
	closeFd(fd)
}

func (s *helperServer) handle(req *helperRequest, r *helperReply) (int, error) {
	switch req.Op {
	case "bind":
		s.mu.Lock()
		ok := s.binds[bindKey{req.Proto, req.Fwd}] || s.ns.mayBind(req.Proto, req.Fwd)
		s.mu.Unlock()
		if !ok {
			return -1, fmt.Errorf("%s port %d is not a configured forward", req.Proto, req.Fwd.HostPort)
		}
		return s.host.Bind(req.Proto, req.Fwd)
	case "dial":
		if !s.ready {
			return -1, errors.New("no unix socket or command before the engine is ready")
		}
		// Forget commands that have exited, which an engine need not
		// end, once nothing they started lives on in their group
		// either: ending the connection stops that too.
		for id, p := range s.procs {
			if p.Gone() {
				p.Release()
				delete(s.procs, id)
			}
		}
		fd, p, err := s.host.OpenSpecial(req.Port)
		if p != nil {
			s.nextID++
			r.ID = s.nextID
			s.procs[r.ID] = p
		}
		return fd, err
	case "endcmd":
		if p := s.procs[req.ID]; p != nil {
			p.Stop()
			delete(s.procs, req.ID)
		}
		return -1, nil
	case "nsbind", "nsproc", "nssplice":
		if s.ns == nil {
			return -1, errors.New("no namespace (pasta mode only)")
		}
		return s.ns.handle(req)
	case "ready", "fail":
		if s.ready {
			return -1, errors.New("the engine is ready already")
		}
		if req.Op == "fail" {
			s.onFail(req.Msg)
			return -1, nil
		}
		err := s.onReady()
		s.ready = err == nil
		return -1, err
	}
	return -1, fmt.Errorf("unknown request %q", req.Op)
}

// allow adds what req configures (the command line's forwards, or an
// "add" that ctlRelay read) to the helper's table: the forwards it may
// bind and where each diverted port leads, with commands resolved now.
// It changes nothing and fails if a spec does not parse, a command is
// not found or a gateway port is diverted already.
func (s *helperServer) allow(req *ctlRequest) error {
	_, err := s.allowUndo(req)
	return err
}

// allowUndo is allow, and returns how to take back what it added.
func (s *helperServer) allowUndo(req *ctlRequest) (undo func(), err error) {
	binds, err := configuredBinds(req)
	if err != nil {
		return nil, err
	}
	specials := map[uint16]*slirp.Special{}
	for _, u := range req.UnixFwd {
		port, path, err := parseSpecial("--unix-fwd", "PATH", u)
		if err != nil {
			return nil, err
		}
		if err := s.freePort(specials, port); err != nil {
			return nil, fmt.Errorf("--unix-fwd %s: %w", u, err)
		}
		if s.id != nil {
			if err := reachableAs(*s.id, path); err != nil {
				return nil, fmt.Errorf("--unix-fwd %s: %w", u, err)
			}
		}
		specials[port] = &slirp.Special{Path: path}
	}
	for _, c := range req.CmdFwd {
		port, argv, err := resolveCmdFwd(c)
		if err == nil {
			err = s.freePort(specials, port)
		}
		if err != nil {
			return nil, fmt.Errorf("--cmd-fwd %s: %w", c, err)
		}
		specials[port] = &slirp.Special{Argv: argv, Max: s.cmdMax}
	}
	var added []bindKey
	s.mu.Lock()
	if s.binds == nil {
		s.binds = map[bindKey]bool{}
	}
	for _, b := range binds {
		if !s.binds[b] {
			s.binds[b] = true
			added = append(added, b)
		}
	}
	s.mu.Unlock()
	for port, sp := range specials {
		s.host.SetSpecial(port, sp)
	}
	return func() {
		s.mu.Lock()
		for _, b := range added {
			delete(s.binds, b)
		}
		s.mu.Unlock()
		for port := range specials {
			s.host.SetSpecial(port, nil)
		}
	}, nil
}

// reachableAs fails if the user id, whose rights the confined thread
// connects with, may not connect to the unix socket at path: a guest's
// connections would all be refused, which the user would learn only
// from the log. A path that does not exist yet passes: the server may start
// later. The check runs on a thread of its own that takes id's
// credentials and ends with its goroutine.
func reachableAs(id identity, path string) error {
	if strings.HasPrefix(path, "@") {
		return nil // abstract: no permissions
	}
	done := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with us
		err := dropThreadPrivileges(id)
		if err == nil {
			err = unix.Access(path, unix.W_OK)
		}
		done <- err
	}()
	if err := <-done; err == unix.EACCES {
		return fmt.Errorf("uid %d, gid %d (gopasst's engine's user, --runas) may not connect to %s: make it writable for them, or choose another --runas", id.uid, id.gid, path)
	} else if err != nil && err != unix.ENOENT {
		return err
	}
	return nil
}

// freePort fails if port is diverted already, in the table or in the
// request.
func (s *helperServer) freePort(specials map[uint16]*slirp.Special, port uint16) error {
	if specials[port] != nil || s.host.HasSpecial(port) {
		return fmt.Errorf("gateway port %d is already diverted", port)
	}
	return nil
}

// revoke takes out of the table what a "remove" that the engine carried
// out removed.
func (s *helperServer) revoke(req *ctlRequest) {
	if binds, err := configuredBinds(req); err == nil {
		s.mu.Lock()
		for _, b := range binds {
			delete(s.binds, b)
		}
		s.mu.Unlock()
	}
	if ports, err := specialPorts(req); err == nil {
		for _, p := range ports {
			s.host.SetSpecial(p, nil)
		}
	}
}

// configuredBinds is every forward req's -t and -u specs may bind.
func configuredBinds(req *ctlRequest) ([]bindKey, error) {
	var out []bindKey
	for _, p := range []struct {
		proto slirp.Proto
		specs []string
	}{{slirp.TCP, req.TCP}, {slirp.UDP, req.UDP}} {
		exp, err := expandSpecs(p.specs)
		if err != nil {
			return nil, err
		}
		for _, e := range exp {
			for _, f := range e.fwds {
				out = append(out, bindKey{p.proto, f})
			}
		}
	}
	return out, nil
}

// resolveCmdFwd parses a --cmd-fwd PORT:COMMAND and resolves the command
// once, here: resolving it on the engine's request would tell the engine
// which files exist.
func resolveCmdFwd(s string) (uint16, []string, error) {
	port, cmd, err := parseSpecial("--cmd-fwd", "COMMAND", s)
	if err != nil {
		return 0, nil, err
	}
	argv, err := splitCommand(cmd)
	if err != nil {
		return 0, nil, err
	}
	if len(argv) == 0 {
		return 0, nil, errors.New("empty command")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return 0, nil, err
	}
	return port, append([]string{path}, argv[1:]...), nil
}

// confineServingThread leaves the thread that serves the engine, and so
// every command it starts (they are forked from it), with nothing a
// compromised engine could use, whoever started gopasst: the engine's
// user, no supplementary groups, no capabilities in any set (ambient
// ones included), an empty bounding set where we may drop it (root), and
// no_new_privs. The process's limits, which commands inherit, lose core
// dumps and are held to 1024 descriptors. The helper's other threads
// keep the starter's rights, to remove at exit the files gopasst made.
func confineServingThread(id identity) error {
	lastCap, err := readInt("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		lastCap = 63
	}
	for c := 0; c <= lastCap; c++ {
		_, _, e := unix.RawSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0)
		if e == unix.EPERM {
			break // no CAP_SETPCAP: no_new_privs keeps the set from mattering
		}
		if e != 0 {
			return fmt.Errorf("dropping the bounding set: %w", e)
		}
	}
	if err := dropThreadPrivileges(id); err != nil {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("dropping capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("dropping ambient capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	lim := syscall.Rlimit{}
	if err := syscall.Setrlimit(syscall.RLIMIT_CORE, &lim); err != nil {
		return fmt.Errorf("RLIMIT_CORE: %w", err)
	}
	err = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	if err == nil {
		lim.Cur, lim.Max = min(lim.Cur, cmdNofile), min(lim.Max, cmdNofile)
		err = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	if err != nil {
		return fmt.Errorf("RLIMIT_NOFILE: %w", err)
	}
	return nil
}

// cmdNofile bounds the descriptors of commands (and of the helper, which
// needs few once the engine is ready).
const cmdNofile = 1024

// hostileEngine is set only in test builds (hostile_engine.go, build tag
// hostileengine), where the engine plays a compromised one: at "set-up",
// before it is ready, and at "ready" after.
var hostileEngine func(stage string, c *helperClient, log *log.Logger)
