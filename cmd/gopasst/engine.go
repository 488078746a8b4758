package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gopasst/gopasst/pkg/logfile"
	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/rtnl"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// The two halves of a running gopasst (see sandbox.go): supervise runs in
// the process that was started and becomes the helper; runEngine runs in
// the sandboxed child, which the helper re-executes with the same
// arguments and envEngine set.

const envEngine = "GOPASST_ENGINE" // set in the engine: its engineEnv, as JSON

// Kinds of guest link the engine is given.
const (
	linkListen = "listen" // a listening unix socket: QEMU connects
	linkStream = "stream" // a connected stream socket (--fd)
	linkTap    = "tap"    // a tap device (ns)
	linkNone   = ""       // --vsock: the engine listens itself
)

// engineEnv tells the engine what it was given: descriptors (-1 for
// none) and whether it runs in namespaces of its own.
type engineEnv struct {
	Link, Helper, Log, Pcap, Control int
	Repair                           int // the TCP_REPAIR helper's listening socket
	Kind                             string
	Isolated                         bool
	Foreground                       bool
	Step                             string // how far the start is (sandbox.go)
	Keeper, KeeperPid                int    // the keeper's socket and pid, once started
}

// engineRun is what the helper needs to know of the engine it starts.
type engineRun struct {
	link       int
	kind       string
	sock       ownedFile // the socket file to remove at exit, if any
	repair     string    // where a TCP_REPAIR helper connects (--repair-path), if anywhere
	pidFile    string
	foreground bool
	cmdDone    <-chan struct{} // ns: the program has exited
	signal     func(os.Signal) // where signals to us go (default: the engine)
	ns         *pastaHelper    // pasta: the engine's requests for the namespace's side
}

// supervise starts the engine and serves as its helper until it exits,
// then removes the files gopasst made. Errors before the engine is ready
// go to stderr, and ready is called once it is.
func supervise(o *NetOptions, r engineRun, stderr io.Writer, ready func()) int {
	var made []ownedFile
	code, err := superviseErr(o, r, stderr, ready, &made)
	for _, f := range append(made, r.sock) {
		f.remove()
	}
	if err != nil {
		return fail(stderr, "%v", err)
	}
	return code
}

// superviseErr adds each file it makes to made, for supervise to remove.
func superviseErr(o *NetOptions, r engineRun, stderr io.Writer, ready func(), made *[]ownedFile) (int, error) {
	id, err := runAsIdentity(o.RunAs)
	if err != nil {
		return 1, err
	}
	env := engineEnv{Link: -1, Log: -1, Pcap: -1, Control: -1, Repair: -1, Kind: r.kind, Foreground: r.foreground}
	var files []*os.File
	pass := func(f *os.File) int {
		files = append(files, f)
		return 2 + len(files)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if r.link >= 0 {
		env.Link = pass(os.NewFile(uintptr(r.link), "link"))
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 1, err
	}
	defer unix.Close(pair[0])
	env.Helper = pass(os.NewFile(uintptr(pair[1]), "helper"))
	if o.LogFile != "" {
		f, err := logfile.OpenFile(o.LogFile)
		if err != nil {
			return 1, fmt.Errorf("--log-file: %v", err)
		}
		env.Log = pass(f)
	}
	if o.Pcap != "" {
		f, err := qemusock.OpenPcapFile(o.Pcap)
		if err != nil {
			return 1, fmt.Errorf("--pcap: %v", err)
		}
		env.Pcap = pass(f)
	}
	if o.CmdFwdMax < 1 {
		return 1, errors.New("--cmd-fwd-max: at least 1")
	}
	srv := helperServer{fd: pair[0], cmdMax: o.CmdFwdMax, id: &id, host: slirp.LocalHost{Freebind: o.Freebind, Only4: o.IPv4, Only6: o.IPv6}, ns: r.ns}
	if err := srv.allow(&ctlRequest{TCP: o.TCPPorts, UDP: o.UDPPorts, UnixFwd: o.UnixFwd, CmdFwd: o.CmdFwd}); err != nil {
		return 1, err
	}
	var relay *ctlRelay
	if o.Control != "" {
		l, err := listenControl(o.Control)
		if err != nil {
			return 1, err
		}
		*made = append(*made, own(o.Control))
		l.SetUnlinkOnClose(false)
		defer l.Close()
		ch, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return 1, fmt.Errorf("--control: %v", err)
		}
		relay = newCtlRelay(l, os.NewFile(uintptr(ch[0]), "control"), &srv, o)
		defer relay.engine.Close()
		env.Control = pass(os.NewFile(uintptr(ch[1]), "control"))
	}
	if r.repair != "" {
		fd, err := qemusock.Listen(r.repair)
		if err != nil {
			return 1, fmt.Errorf("--repair-path: %v", err)
		}
		*made = append(*made, own(r.repair))
		env.Repair = pass(os.NewFile(uintptr(fd), "repair"))
	}
	// Descriptors we inherited and do not pass stay out of the engine.
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	cmd, err := startEngineProcess(&env, files, id, stderr)
	if err != nil {
		return 1, err
	}
	for _, f := range files {
		f.Close()
	}
	files = nil

	var failure string
	// handles: the engine has said it is ready, so it has its signal
	// handler, set up before; serving: the helper has done its part too.
	// A signal between the two, to a caller that saw the PID file, is
	// the engine's to hear: killed, it made the helper exit 137.
	var handles, serving atomic.Bool
	var gone atomic.Bool // the namespace went during set-up
	srv.onReady = func() error {
		handles.Store(true)
		pid, err := writePidFile(r.pidFile, cmd.Process.Pid)
		if err != nil {
			return err
		}
		*made = append(*made, pid)
		if err := confineServingThread(id); err != nil {
			return err
		}
		if relay != nil {
			go relay.serve()
		}
		serving.Store(true)
		ready()
		return nil
	}
	srv.onFail = func(msg string) { failure = msg }
	served := make(chan struct{})
	go func() { srv.serve(); close(served) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, stopSignals...)
	var stopping sync.Once
	stop := func(s os.Signal) {
		cmd.Process.Signal(s)
		// An engine held in a system call (a peer that shares one of its
		// files made it blocking) never hears it: it is killed after a
		// while, rather than left behind with its helper for good.
		stopping.Do(func() { time.AfterFunc(engineStopGrace, func() { cmd.Process.Kill() }) })
	}
	go func() {
		for {
			select {
			case s := <-sig:
				switch {
				case r.signal != nil:
					r.signal(s)
				case handles.Load():
					stop(s)
				default:
					// An engine in set-up may not hear it: just exec'd
					// as its PID namespace's init, it ignores a signal
					// it has no handler for yet.
					cmd.Process.Kill()
				}
			case <-r.cmdDone:
				if handles.Load() {
					stop(unix.SIGTERM)
				} else {
					// As above: a SIGTERM now may be lost, and the
					// engine would serve a namespace gone for good.
					gone.Store(true)
					cmd.Process.Kill()
				}
				r.cmdDone = nil
			}
		}
	}()
	cmd.Wait()
	<-served
	if !serving.Load() {
		switch {
		case failure != "":
		case gone.Load():
			failure = "the namespace went away during set-up"
		default:
			failure = "the engine exited during set-up: " + cmd.ProcessState.String()
		}
		return 1, fmt.Errorf("%s", failure)
	}
	return exitStatus(cmd.ProcessState), nil
}

// engineStopGrace is how long an engine told to stop may take before it
// is killed: an engine that hears the signal stops in milliseconds, and
// libvirt kills a passt that has not exited after 10 s (the helper then
// could not remove its files).
const engineStopGrace = 5 * time.Second

// stopSignals end gopasst cleanly. passt's handler takes SIGQUIT as
// SIGTERM: left to Go's default, it would dump goroutines and exit 2,
// leaving the socket behind.
var stopSignals = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT}

// exitStatus is a process's exit code as a shell gives it: 128 plus the
// signal that killed it.
func exitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// startEngineProcess re-executes gopasst as the engine with files from
// descriptor 3 on, in new namespaces where the host allows it.
func startEngineProcess(env *engineEnv, files []*os.File, id identity, stderr io.Writer) (*exec.Cmd, error) {
	var err error
	env.Keeper, env.KeeperPid = -1, 0
	for _, isolate := range []bool{true, false} {
		env.Isolated = isolate
		// By /proc/self/exe: the engine's user may not be allowed to
		// search the directories on the way to our executable.
		cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
		cmd.Args[0] = os.Args[0]
		cmd.Env = engineEnviron(*env)
		// Standard error is a pipe that os/exec copies to ours, never
		// the terminal itself; stdin and stdout are /dev/null.
		cmd.Stderr = io.MultiWriter(os.Stderr)
		cmd.ExtraFiles = files
		cmd.Dir = "/"
		cmd.SysProcAttr = sandboxAttr(id, isolate)
		err = cmd.Start()
		if err == nil {
			return cmd, nil
		}
		if !isolate || !isolationRefused(err) {
			break
		}
		fmt.Fprintf(stderr, "gopasst: warning: no user namespace for the sandbox (%v): "+
			"the engine runs without namespace isolation, with seccomp\n", err)
	}
	return nil, fmt.Errorf("starting the engine: %v", err)
}

// engineGODEBUG is the Go runtime setting the engine runs with: no
// preemption signals. The runtime signals a goroutine that has not passed
// through the scheduler for 10 ms, and the engine's loop waits for
// traffic in raw system calls (slirp.Engine.wait), which a signal would
// only cut short, waking the engine for nothing. Without the signal, the
// runtime still marks the goroutine, which yields at its next call.
const engineGODEBUG = "asyncpreemptoff=1"

// engineEnviron is our environment for a step of the engine's start:
// with env and engineGODEBUG, without the daemon's.
func engineEnviron(env engineEnv) []string {
	js, _ := json.Marshal(env)
	environ := []string{envEngine + "=" + string(js)}
	godebug := "GODEBUG=" + engineGODEBUG
	for _, e := range os.Environ() {
		switch {
		case strings.HasPrefix(e, "GODEBUG="):
			godebug = e + "," + engineGODEBUG // the last setting of a name wins
		case !strings.HasPrefix(e, envDaemon+"=") && !strings.HasPrefix(e, envEngine+"="):
			environ = append(environ, e)
		}
	}
	return append(environ, godebug)
}

// engineEnvironment returns the engine's engineEnv, if this process is
// the engine.
func engineEnvironment() (engineEnv, bool) {
	js := os.Getenv(envEngine)
	if js == "" {
		return engineEnv{}, false
	}
	var env engineEnv
	if err := json.Unmarshal([]byte(js), &env); err != nil {
		fmt.Fprintf(os.Stderr, "gopasst: %s: %v\n", envEngine, err)
		os.Exit(1)
	}
	return env, true
}

// runEngine is the engine: it sets up with what the helper gave it and
// binds through the helper, enters the sandbox, tells the helper it is
// ready, and serves until SIGTERM, SIGINT or a one-off client's exit.
// extra, if not nil, finishes the set-up (pasta's namespace side).
func runEngine(o *NetOptions, cfg netSetup, env engineEnv, vsockAddr string, extra engineExtra) int {
	switch env.Step {
	case stepConfine:
		notDumpable()
		err := confineExec(env)
		newHelperClient(env.Helper).fail(err.Error())
		return 1
	case stepKeeper:
		return keepRoot()
	}
	nameThreads(filepath.Base(os.Args[0]))
	notDumpable() // after naming: it can make /proc/self/task/*/comm root's
	// One processor: the engine's loop passes through the scheduler every
	// few milliseconds (slirp.Engine.Run), and with a second one idle each
	// pass woke another thread to take the goroutine or its processor.
	runtime.GOMAXPROCS(1)
	helper := newHelperClient(env.Helper)
	eng, logger, err := setUpEngine(o, cfg, env, vsockAddr, helper)
	if err == nil && hostileEngine != nil {
		hostileEngine("set-up", helper, logger)
	}
	if err == nil && extra != nil {
		err = extra(eng, helper, logger)
	}
	if err == nil {
		err = enterSandbox(env)
	}
	if err == nil {
		err = helper.ready()
	}
	if err != nil {
		helper.fail(err.Error())
		return 1
	}
	if hostileEngine != nil {
		go hostileEngine("ready", helper, logger)
	}
	if sandboxProbe != nil {
		sandboxProbe(logger)
		return 0
	}
	if err := eng.Run(); err != nil {
		logger.Printf("%v", err)
		return 1
	}
	return 0
}

// setUpEngine makes the engine and everything it serves, while the host's
// file system is still there.
func setUpEngine(o *NetOptions, cfg netSetup, env engineEnv, vsockAddr string, helper *helperClient) (*slirp.Engine, *log.Logger, error) {
	logger, err := openLog(o, env.Log, env.Foreground)
	if err != nil {
		return nil, nil, err
	}
	cfg.Debug = o.Debug || o.Trace
	cfg.Trace = o.Trace
	cfg.Quiet = o.Quiet && !cfg.Debug // passt's --debug outranks --quiet
	cfg.Log = logger
	cfg.Host = helper
	raiseFdLimit()
	ephemeralPorts()
	if env.Pcap >= 0 {
		if cfg.Pcap, err = qemusock.NewPcap(os.NewFile(uintptr(env.Pcap), "pcap")); err != nil {
			return nil, nil, fmt.Errorf("--pcap: %w", err)
		}
	}
	if env.Repair >= 0 {
		cfg.RepairListen = os.NewFile(uintptr(env.Repair), "repair")
	}
	lfd := -1
	if env.Kind == linkListen {
		lfd = env.Link
	}
	eng, err := slirp.New(cfg.Config, lfd)
	if err != nil {
		return nil, nil, err
	}
	watchNeighbours(eng, cfg, logger)
	fwds := ctlRequest{TCP: o.TCPPorts, UDP: o.UDPPorts, UnixFwd: o.UnixFwd, CmdFwd: o.CmdFwd}
	if err := addForwards(eng, &fwds); err != nil {
		return nil, nil, err
	}
	if env.Control >= 0 {
		go serveControl(os.NewFile(uintptr(env.Control), "control"), eng)
	}
	switch env.Kind {
	case linkStream:
		unix.SetNonblock(env.Link, true)
		eng.AttachStream(env.Link) // before Run, this goroutine is the engine's
	case linkTap:
		if err := eng.AttachTap(env.Link); err != nil {
			return nil, nil, err
		}
	}
	if vsockAddr != "" {
		if _, err := listenVsock(vsockAddr, eng, logger); err != nil {
			return nil, nil, err
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, stopSignals...)
	go func() {
		s := <-sig
		if !cfg.Quiet {
			logger.Printf("exiting on %v", s)
		}
		eng.Stop()
	}()
	for _, w := range cfg.warnings {
		logger.Print(w)
	}
	if cfg.Quiet {
		return eng, logger, nil
	}
	logger.Printf("gopasst %s: MTU %d", version, cfg.MTU)
	for _, l := range startSummary(cfg.Config) {
		logger.Print(l)
	}
	for _, n := range cfg.notes {
		logger.Print(n)
	}
	return eng, logger, nil
}

// startSummary is what passt prints at start, in its layout (conf.c's
// conf_print): callers parse it, as krunai takes the guest's address,
// mask and router from the "DHCP:" block on passt's standard error.
func startSummary(c slirp.Config) []string {
	l := []string{"MAC:", "    host: " + net.HardwareAddr(c.OurMAC[:]).String()}
	list := func(title string, items []string) {
		if len(items) > 0 {
			l = append(l, title)
			for _, it := range items {
				l = append(l, "    "+it)
			}
		}
	}
	strs := func(as []netip.Addr) []string {
		var s []string
		for _, a := range as {
			s = append(s, a.String())
		}
		return s
	}
	if c.Addr4.IsValid() {
		if m := c.HostLoopback(false); m.IsValid() {
			l = append(l, "    NAT to host 127.0.0.1: "+m.String())
		}
		if !c.NoDHCP {
			mask := net.IP(net.CIDRMask(c.Prefix4, 32)).String()
			l = append(l, "DHCP:", "    assign: "+c.Addr4.String(), "    mask: "+mask, "    router: "+c.Gateway4.String())
		}
		list("DNS:", strs(c.DNS4))
		list("DNS search list:", c.Search)
	}
	if c.Addr6.IsValid() {
		if m := c.HostLoopback(true); m.IsValid() {
			l = append(l, "    NAT to host ::1: "+m.String())
		}
		title := ""
		switch {
		case !c.NoNDP && !c.NoDHCPv6:
			title = "NDP/DHCPv6:"
		case !c.NoDHCPv6:
			title = "DHCPv6:"
		case !c.NoNDP:
			title = "NDP:"
		}
		if title != "" {
			l = append(l, title, "    assign: "+c.Addr6.String(), "    router: "+c.Gateway6.String(), "    our link-local: "+c.OurLL6.String())
		}
		list("DNS:", strs(c.DNS6))
		list("DNS search list:", c.Search)
	}
	return l
}

// watchNeighbours has the engine mirror the host's neighbours on the
// template interfaces to the guest, as passt does, before the guest is
// there: what the dump finds is not announced. Where the host refuses
// the netlink socket, a warning: the guest then knows every address by
// our MAC, as it did before passt 2026.03.
func watchNeighbours(eng *slirp.Engine, cfg netSetup, logger *log.Logger) {
	index := func(name string) int {
		if name == "" {
			return 0
		}
		if ifi, err := net.InterfaceByName(name); err == nil {
			return ifi.Index
		}
		return 0
	}
	if4, if6 := index(cfg.ifname4), index(cfg.ifname6)
	if if4 == 0 && if6 == 0 {
		return // local mode: no template, no neighbours
	}
	c, err := rtnl.OpenNeigh(if4, if6)
	if err == nil {
		if err = eng.WatchNeighbours(c, if4, if6); err != nil {
			c.Close()
		}
	}
	if err != nil {
		logger.Printf("warning: the host's neighbours will not reach the guest: %v", err)
	}
}

// notDumpable keeps other processes of the engine's user from tracing it
// or reading its memory from the start of each image, not only from its
// sandbox on: an exec made it dumpable again, and it holds the guest's
// link and the helper's socket through set-up. Without namespaces of its
// own (where the host refuses them) it is nobody in the host's, where
// any other process of nobody could attach to it; passt is not dumpable
// once it is nobody.
func notDumpable() { unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0) }

// nameThreads takes back our name for ps, ss and the audit log, after an
// exec by /proc/self/exe named us "exe": in every thread, until no new one
// appears (threads made later inherit it from the thread that makes them).
func nameThreads(name string) {
	done := map[string]bool{}
	for {
		tids, err := os.ReadDir("/proc/self/task")
		more := false
		for _, tid := range tids {
			if !done[tid.Name()] {
				os.WriteFile("/proc/self/task/"+tid.Name()+"/comm", []byte(name), 0)
				done[tid.Name()], more = true, true
			}
		}
		if err != nil || !more {
			return
		}
	}
}
