package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pasta: gopasst gives a network namespace its network, as passt's pasta
// does, under pasta's name and with pasta's command line, for podman and
// rootlesskit. The namespace is a running process's (PID), a bound file
// (--netns), or new ones made for a command (the default, "gopasst ns").
// A small agent joins the namespace to make and configure the tap and
// bind the namespace's side of -T and -U (pasta_agent.go); the engine
// serves the tap from the host's namespace, sandboxed as in serve mode
// (pasta_engine.go).

// pastaOptions are pasta's command line: passt's options, and pasta's own.
type pastaOptions struct {
	NetOptions `embed:""`

	Foreground   bool     `short:"f" help:"Stay in the foreground (with a command, always)."`
	PidFile      string   `short:"P" name:"pid" placeholder:"FILE" help:"Write the PID to FILE once ready."`
	NSIfname     string   `short:"I" name:"ns-ifname" placeholder:"NAME" help:"The tap's name in the namespace (default: the host's template interface's, else tap0)."`
	TCPNS        []string `short:"T" name:"tcp-ns" sep:"none" placeholder:"SPEC" help:"Forward namespace TCP ports to the host's loopback: auto (default), none or ports. Repeatable."`
	UDPNS        []string `short:"U" name:"udp-ns" sep:"none" placeholder:"SPEC" help:"Forward namespace UDP ports to the host's loopback: auto (default), none or ports. Repeatable."`
	Userns       string   `name:"userns" placeholder:"PATH" help:"User namespace to join (default with a PID: the PID's)."`
	Netns        string   `name:"netns" placeholder:"PATH|NAME" help:"Network namespace to join, a path or a name in /run/netns."`
	NetnsOnly    bool     `name:"netns-only" help:"Join the network namespace only, not a user namespace."`
	NoNetnsQuit  bool     `name:"no-netns-quit" help:"Do not exit when the namespace's file is removed or the PID exits."`
	ConfigNet    bool     `name:"config-net" help:"Configure the tap: addresses, routes, MTU, link up."`
	NoCopyRoutes bool     `name:"no-copy-routes" help:"With --config-net, set the default route only, not the template interface's routes."`
	NoCopyAddrs  bool     `name:"no-copy-addrs" help:"With --config-net, set one address only, not the template interface's addresses."`
	NSMAC        string   `name:"ns-mac-addr" placeholder:"MAC" help:"MAC address of the tap in the namespace (default: the kernel's)."`
	NoSplice     bool     `name:"no-splice" help:"Forward -t connections from the host's loopback through the tap too, not socket to socket."`
	SpliceOnly   bool     `name:"splice-only" help:"Make no tap: forward only between the host's loopback and the namespace's (-t, -u from the host's loopback; -T, -U), as pasta. Implies --host-lo-to-ns-lo."`
	HostLoToNsLo bool     `name:"host-lo-to-ns-lo" help:"Connections from the host's loopback go to the namespace's loopback, not its address."`
	DHCPDNS      bool     `name:"dhcp-dns" help:"Name the resolvers in DHCP, DHCPv6 and RAs (pasta's default: not)."`
	DHCPSearch   bool     `name:"dhcp-search" help:"Name the search domains in DHCP, DHCPv6 and RAs (pasta's default: not)."`
	RepairPath   string   `name:"repair-path" placeholder:"none" help:"Accepted as 'none' only, as pasta does: live migration is vhost-user's."`

	Target []string `arg:"" optional:"" passthrough:"partial" help:"PID of a process whose namespaces to join, or [--] COMMAND [ARGS...] to run in new ones (default: $SHELL)."`
}

const envPastaDaemon = "GOPASST_PASTA_DAEMON" // set in the background process

// isPastaName tells whether gopasst was run as pasta.
func isPastaName(argv0 string) bool { return runAs(argv0, "pasta") }

// runAs tells whether gopasst was run as name: a link named so, or
// name.avx2, as Debian's passt and pasta re-execute themselves.
func runAs(argv0, name string) bool {
	b := filepath.Base(argv0)
	return b == name || strings.HasPrefix(b, name+".")
}

// modeArgs picks the mode as passt's conf_mode does: pasta's under that
// name, unless an option before "--" asks for vhost-user, which is passt
// mode whatever the name, or for the back-end's capabilities, which pasta
// prints too. Under passt's name, help is passt's options, as passt's is.
func modeArgs(argv0 string, args []string) []string {
	if runAs(argv0, "passt") && len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
		return []string{"serve", "--help"}
	}
	if !isPastaName(argv0) {
		return args
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "--vhost-user" || a == "--print-capabilities" {
			return args
		}
	}
	return append([]string{"pasta"}, args...)
}

// pastaUsageError reports a command line error as pasta's getopt does:
// podman retries without --map-guest-addr only when it reads
// "unrecognized option '--map-guest-addr'".
func pastaUsageError(stderr io.Writer, err error) int {
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "unknown flag "); ok {
		flag, _, _ := strings.Cut(rest, ",")
		if name, long := strings.CutPrefix(flag, "--"); long {
			msg = fmt.Sprintf("unrecognized option '--%s'", name)
		} else {
			msg = fmt.Sprintf("invalid option -- '%s'", strings.TrimPrefix(flag, "-"))
		}
	}
	fmt.Fprintf(stderr, "%s: %s\n", filepath.Base(os.Args[0]), msg)
	return 1
}

// nsTarget is the namespace pasta serves.
type nsTarget struct {
	net, user string // paths to join; user "" joins none
	pid       int    // the namespace lives as long as this process
	file      string // or as long as this file (--netns)
}

// portModes are the forwards of one direction: auto, or specs.
type portModes struct {
	auto  bool
	specs []string
}

// pastaPorts splits a -t, -u, -T or -U list into auto and the rest;
// pasta's default is auto.
func pastaPorts(specs []string) portModes {
	if len(specs) == 0 {
		return portModes{auto: true}
	}
	var m portModes
	for _, s := range specs {
		if s == "auto" {
			m.auto = true
		} else {
			m.specs = append(m.specs, s)
		}
	}
	return m
}

// pastaForwards are pasta's four directions of forwarding.
type pastaForwards struct{ tcp, udp, tcpNS, udpNS portModes }

// forwards normalizes the options: -t and -u keep their specs, and the
// engine binds them as in serve mode; auto and -T/-U are pasta's.
func (o *pastaOptions) forwards() (pastaForwards, error) {
	for _, c := range []struct {
		opt    string
		specs  []string
		nsSide bool
	}{{"-t", o.TCPPorts, false}, {"-u", o.UDPPorts, false}, {"-T", o.TCPNS, true}, {"-U", o.UDPNS, true}} {
		if err := checkModes(c.opt, c.specs, true, c.nsSide); err != nil {
			return pastaForwards{}, err
		}
	}
	f := pastaForwards{pastaPorts(o.TCPPorts), pastaPorts(o.UDPPorts), pastaPorts(o.TCPNS), pastaPorts(o.UDPNS)}
	o.TCPPorts, o.UDPPorts = f.tcp.specs, f.udp.specs
	var all []string
	for _, m := range []portModes{f.tcp, f.udp, f.tcpNS, f.udpNS} {
		all = append(all, m.specs...)
	}
	_, err := portSpecs(all)
	return f, err
}

// pastaConfig is the engine's configuration in pasta mode, on host.
func pastaConfig(o *pastaOptions, host hostState) (netSetup, error) {
	cfg, err := buildConfig(&o.NetOptions, host)
	// DHCP, DHCPv6 and RAs name resolvers and search domains in pasta
	// mode only when asked: the namespace has the host's resolv.conf.
	cfg.NoDHCPDNS, cfg.NoDHCPSearch = !o.DHCPDNS, !o.DHCPSearch
	// The tap is the only guest there will be: once the namespace deletes
	// it, the engine ends, as pasta does, rather than holding the host's
	// ports for nobody. With --splice-only there is none, and the
	// namespace's going ends the engine.
	cfg.OneOff = !o.SpliceOnly
	if o.ConfigNet {
		// The namespace has its addresses already, as pasta's does.
		cfg.NoRA, cfg.Configured6 = true, true
	}
	return cfg, err
}

// runPasta is pasta's mode: it checks the command line, goes to the
// background (except for a command or with -f) and serves the namespace.
func runPasta(o *pastaOptions, stderr io.Writer) int {
	if o.RepairPath != "" && o.RepairPath != "none" {
		return fail(stderr, "--repair-path is for vhost-user mode only")
	}
	// Without a tap, the namespace's loopback is all there is to reach.
	o.HostLoToNsLo = o.HostLoToNsLo || o.SpliceOnly
	fwds, err := o.forwards()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	cfg, err := pastaConfig(o, thisHost)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if env, ok := engineEnvironment(); ok {
		lo := o.NetOptions
		if o.isCommand() {
			lo.Silent = !(o.Debug || o.Trace)
		}
		sp := newSplicer(newSpliceRules(o, cfg, fwds))
		if sp != nil {
			cfg.Splicer = sp
		}
		return runEngine(&lo, cfg, env, "", pastaEngine(o, fwds, sp))
	}
	if os.Getenv(envPastaDaemon) != "" {
		o.inDir(os.Getenv(envDaemonDir))
	}
	t, command, err := o.target()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if command != nil {
		return pastaCommand(o, fwds, cfg, command, stderr)
	}
	if o.Foreground {
		return pastaServe(o, fwds, cfg, t, nil, stderr, func() {})
	}
	if os.Getenv(envPastaDaemon) == "" {
		return pastaDaemonize(stderr)
	}
	ready := os.NewFile(3, "ready")
	syscall.CloseOnExec(3) // the engine must not hold the parent's pipe
	return pastaServe(o, fwds, cfg, t, nil, ready, func() { ready.Close() })
}

// inDir makes the daemon's relative paths name what they named for its
// caller, whose directory is dir, as Options.inDir does for passt's.
func (o *pastaOptions) inDir(dir string) {
	o.NetOptions.inDir(dir)
	o.PidFile, o.Userns = inDir(dir, o.PidFile), inDir(dir, o.Userns)
	if strings.Contains(o.Netns, "/") { // else a name in /run/netns
		o.Netns = inDir(dir, o.Netns)
	}
}

// operands are the words after the options, less the "--" that ends
// them: pasta's getopt takes it, so that "-- 4242" is a PID as "4242" is.
func (o *pastaOptions) operands() []string {
	if len(o.Target) > 0 && o.Target[0] == "--" {
		return o.Target[1:]
	}
	return o.Target
}

func (o *pastaOptions) isCommand() bool {
	ops := o.operands()
	return o.Netns == "" && !(len(ops) == 1 && isPID(ops[0]))
}

// isShell tells whether the command is the default, $SHELL, which pasta
// starts as a login shell: no command given.
func (o *pastaOptions) isShell() bool {
	return o.isCommand() && len(o.operands()) == 0
}

func isPID(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n > 0
}

// target is the namespace to join from the options, or the command to run
// in new ones.
func (o *pastaOptions) target() (nsTarget, []string, error) {
	switch {
	case o.SpliceOnly && o.NoSplice:
		return nsTarget{}, nil, errors.New("--splice-only is incompatible with --no-splice")
	case (o.NoCopyAddrs || o.NoCopyRoutes) && !o.ConfigNet:
		return nsTarget{}, nil, errors.New("--no-copy-addrs and --no-copy-routes need --config-net")
	case o.Netns != "":
		if len(o.operands()) > 0 {
			return nsTarget{}, nil, errors.New("--netns: no PID or command with it")
		}
		p := o.Netns
		if !strings.Contains(p, "/") {
			p = filepath.Join("/run/netns", p)
		}
		t := nsTarget{net: p, file: p}
		if !o.NetnsOnly {
			t.user = o.Userns
		}
		return t, nil, nil
	case !o.isCommand():
		pid, _ := strconv.Atoi(o.operands()[0])
		t := nsTarget{net: fmt.Sprintf("/proc/%d/ns/net", pid), pid: pid}
		if !o.NetnsOnly {
			t.user = cmp.Or(o.Userns, fmt.Sprintf("/proc/%d/ns/user", pid))
		}
		return t, nil, nil
	}
	command := o.operands()
	if len(command) == 0 {
		command = []string{cmp.Or(os.Getenv("SHELL"), "/bin/sh")}
	}
	return nsTarget{}, command, nil
}

// pastaDaemonize runs gopasst again in the background and exits once it
// is ready (0) or has failed (its message, and 1), as pasta's parent does.
func pastaDaemonize(stderr io.Writer) int {
	dir, err := os.Getwd()
	if err != nil {
		return fail(stderr, "%v", err)
	}
	msg, err := spawnDaemon([]string{envPastaDaemon + "=1", envDaemonDir + "=" + dir}, nil)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if msg != "" {
		fmt.Fprintln(stderr, msg)
		return 1
	}
	return 0
}

// pastaServe joins the namespace and serves it until the engine exits, or
// the namespace goes away. stderr gets errors before the engine is ready.
func pastaServe(o *pastaOptions, fwds pastaForwards, cfg netSetup, t nsTarget, r *engineRun, stderr io.Writer, ready func()) int {
	plan, err := planNS(o, cfg)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	plan.Splice = newSpliceRules(o, cfg, fwds)
	agent, tap, err := startAgent(t, plan)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer agent.close()
	run := engineRun{foreground: o.Foreground}
	if r != nil {
		run = *r
	} else if !o.NoNetnsQuit {
		run.cmdDone = watchTarget(t)
	}
	ph, err := newPastaHelper(agent, fwds)
	if err != nil {
		unix.Close(tap)
		return fail(stderr, "%v", err)
	}
	defer ph.close()
	run.link, run.kind, run.pidFile, run.ns = tap, linkTap, o.PidFile, ph
	if tap < 0 { // --splice-only
		run.kind = linkNone
	}
	return supervise(&o.NetOptions, run, stderr, ready)
}

// pidfdOpen is pidfd_open(2), which a test makes fail.
var pidfdOpen = unix.PidfdOpen

// watchTarget is closed when the namespace goes: the PID exits, or the
// file is removed or unmounted (checked each second, as pasta's timer).
func watchTarget(t nsTarget) <-chan struct{} {
	gone := make(chan struct{})
	switch {
	case t.pid > 0:
		fd, err := pidfdOpen(t.pid, 0)
		if err == unix.ESRCH {
			close(gone)
			break
		}
		if err != nil {
			// No pidfd (a kernel before 5.3, or a container's seccomp
			// profile that denies it): the PID is looked for each second.
			go func() {
				for unix.Kill(t.pid, 0) != unix.ESRCH {
					time.Sleep(time.Second)
				}
				close(gone)
			}()
			break
		}
		go func() {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			for {
				if n, err := unix.Poll(fds, -1); n > 0 || (err != nil && err != unix.EINTR) {
					break
				}
			}
			unix.Close(fd)
			close(gone)
		}()
	case t.file != "":
		var was unix.Stat_t
		unix.Stat(t.file, &was)
		go func() {
			for {
				time.Sleep(time.Second)
				var now unix.Stat_t
				if unix.Stat(t.file, &now) != nil || now.Ino != was.Ino || now.Dev != was.Dev {
					close(gone)
					return
				}
			}
		}()
	}
	return gone
}
