// Command gopasst is a user-mode network backend for virtual machines, a
// drop-in for passt: QEMU connects to its unix socket with
// "-netdev stream" and the guest gets a full network with no privileges.
package main

import (
	"cmp"
	"fmt"
	"io"
	"log"
	"log/syslog"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kong"
	"github.com/gopasst/gopasst/pkg/logfile"
	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// NetOptions say what the guest's network is: passt's options, spelled as
// passt spells them, plus gopasst's forwards, for a VM (serve) and for a
// program in a namespace (ns) alike. Lists are never split on commas:
// port specs contain commas.
type NetOptions struct {
	Debug bool `short:"d" help:"Print debugging messages."`
	Trace bool `help:"Print per-packet messages (implies --debug)."`
	Quiet bool `short:"q" help:"Only print warnings and errors."`
	// Silent leaves the engine no log but --log-file: set where a
	// command owns the terminal (pasta's and ns's command modes).
	Silent  bool   `kong:"-"`
	Stderr  bool   `short:"e" help:"Log to standard error even when daemonized."`
	LogFile string `short:"l" name:"log-file" placeholder:"PATH" help:"Log to PATH, kept under --log-size."`
	LogSize int64  `name:"log-size" default:"1048576" placeholder:"BYTES" help:"Bound for --log-file."`
	Pcap    string `short:"p" name:"pcap" placeholder:"FILE" help:"Capture every frame to and from the guest in FILE (libpcap format)."`

	MTU         int      `short:"m" type:"mtu" default:"${mtu}" help:"MTU given to the guest by DHCP and RAs; 0 advertises none."`
	Address     []string `short:"a" sep:"none" placeholder:"ADDR[/PLEN]" help:"Guest address, IPv4 or IPv6, with an optional prefix length (default: the host's). One per family."`
	Netmask     string   `short:"n" placeholder:"MASK" help:"IPv4 prefix length or dotted mask."`
	MAC         string   `short:"M" name:"mac-addr" default:"9a:55:9a:55:9a:55" placeholder:"MAC" help:"gopasst's own MAC address."`
	Gateway     []string `short:"g" sep:"none" placeholder:"ADDR" help:"Gateway given to the guest, IPv4 or IPv6 (default: the host's). One per family."`
	Interface   string   `short:"i" placeholder:"NAME" help:"Template interface (default: --outbound-if4/6, else the one with the default route)."`
	Outbound    []string `short:"o" name:"outbound" sep:"none" placeholder:"ADDR" help:"Source address of outbound sockets (default: the routing table's choice). One per family."`
	OutboundIf4 string   `name:"outbound-if4" placeholder:"NAME" help:"Bind IPv4 outbound sockets to this interface; also the IPv4 template interface unless -i."`
	OutboundIf6 string   `name:"outbound-if6" placeholder:"NAME" help:"Bind IPv6 outbound sockets to this interface; also the IPv6 template interface unless -i."`
	DNS         []string `short:"D" name:"dns" sep:"none" placeholder:"ADDR" help:"Resolver given to the guest; 'none' for none. Repeatable."`
	DNSForward  []string `name:"dns-forward" sep:"none" placeholder:"ADDR" help:"Address whose DNS queries go to the host resolver (--dns-host); one per family."`
	DNSHost     []string `name:"dns-host" sep:"none" placeholder:"ADDR" help:"Host resolver that redirected DNS queries go to (default: the first in resolv.conf); one per family."`
	Search      []string `short:"S" sep:"none" placeholder:"LIST" help:"Space-separated search domains given to the guest; 'none' for none. Repeatable."`
	Hostname    string   `short:"H" placeholder:"NAME" help:"Hostname given to the guest by DHCP (pasta: and a command's, else pasta-HOST)."`
	FQDN        string   `name:"fqdn" placeholder:"NAME" help:"FQDN given to the guest by DHCP."`

	MapHostLoopback []string `name:"map-host-loopback" sep:"none" placeholder:"ADDR" help:"Guest address that stands for the host's loopback (default: the gateway); 'none' for none. One per family."`
	MapGuestAddr    []string `name:"map-guest-addr" sep:"none" placeholder:"ADDR" help:"Guest address that stands for the host's own address, which the guest's shadows; 'none' for none. One per family."`
	Freebind        bool     `name:"freebind" help:"Bind forwarded ports (-t, -u) to addresses the host does not have (yet)."`

	NoDHCP       bool `name:"no-dhcp" help:"Do not answer DHCP."`
	NoDHCPDNS    bool `name:"no-dhcp-dns" help:"Give the guest no resolvers by DHCP, DHCPv6 or RA."`
	NoDHCPSearch bool `name:"no-dhcp-search" help:"Give the guest no search domains by DHCP, DHCPv6 or RA."`
	NoMapGW      bool `name:"no-map-gw" help:"Do not map the gateway address to the host's loopback (as --map-host-loopback none)."`
	NoTCP        bool `name:"no-tcp" help:"Disable TCP."`
	NoUDP        bool `name:"no-udp" help:"Disable UDP."`
	NoICMP       bool `name:"no-icmp" help:"Disable ICMP echo."`
	NoNDP        bool `name:"no-ndp" help:"Do not answer NDP (neither solicitations nor RAs)."`
	NoRA         bool `name:"no-ra" help:"Do not send Router Advertisements."`
	NoDHCPv6     bool `name:"no-dhcpv6" help:"Do not answer DHCPv6."`
	IPv4         bool `short:"4" name:"ipv4-only" lastwins:"family" help:"IPv4 only."`
	IPv6         bool `short:"6" name:"ipv6-only" lastwins:"family" help:"IPv6 only (of -4 and -6, the last given counts)."`

	TCPPorts []string `short:"t" name:"tcp-ports" sep:"none" placeholder:"SPEC" help:"Forward host TCP ports to the guest (passt's grammar). Repeatable."`
	UDPPorts []string `short:"u" name:"udp-ports" sep:"none" placeholder:"SPEC" help:"Forward host UDP ports to the guest (passt's grammar). Repeatable."`
	Control  string   `name:"control" placeholder:"PATH" help:"Unix socket (mode 0600) for changing forwards at runtime; see 'gopasst ctl'."`
	UnixFwd  []string `name:"unix-fwd" sep:"none" placeholder:"PORT:PATH" help:"Guest connections to the gateway on PORT go to the host unix socket PATH. Repeatable."`
	CmdFwd   []string `name:"cmd-fwd" sep:"none" placeholder:"PORT:COMMAND" help:"Guest connections to the gateway on PORT run COMMAND on stdin/stdout. Repeatable."`

	CmdFwdMax int `name:"cmd-fwd-max" default:"${cmd_max}" placeholder:"N" help:"Most instances of each --cmd-fwd command at once; past it, connections are reset."`

	MaxTCP  int `name:"max-tcp" default:"${max_tcp}" placeholder:"N" help:"Most TCP connections the guest may have open; past it, new ones are reset."`
	MaxUDP  int `name:"max-udp" default:"${max_udp}" placeholder:"N" help:"Most UDP flows (guest source ports and inbound peers); past it, ICMP 'prohibited'."`
	MaxICMP int `name:"max-icmp" default:"${max_icmp}" placeholder:"N" help:"Most ICMP echo identifiers; past it, ICMP 'prohibited'."`

	RunAs string `name:"runas" placeholder:"UID[:GID]" help:"Run as this user (default when started as root: nobody)."`
	Stats int    `name:"stats" placeholder:"DELAY" help:"Log how many events of each kind gopasst has handled, at most every DELAY seconds (passt's --stats)."`
}

// Options are the serve command's: the network, and how the guest
// connects and the daemon runs.
type Options struct {
	NetOptions `embed:""`

	Foreground bool   `short:"f" help:"Stay in the foreground instead of daemonizing."`
	Socket     string `short:"s" aliases:"socket-path" placeholder:"PATH" help:"Unix socket to listen on; also spelt --socket-path, as in passt (default: the first free gopasst_N.socket in $XDG_RUNTIME_DIR, else /tmp; run as passt, /tmp/passt_N.socket, as passt)."`
	Vsock      string `name:"vsock" placeholder:"[CID:]PORT" help:"Listen on AF_VSOCK (any CID by default) instead of a unix socket, for 'gopasst guest' or gvforwarder in a VM."`
	Fd         int    `short:"F" name:"fd" default:"-1" placeholder:"FD" help:"Serve the connected socket FD instead of listening (implies --one-off), as QEMU's -netdev passt asks."`
	OneOff     bool   `short:"1" name:"one-off" help:"Exit when the first client disconnects."`
	PidFile    string `short:"P" name:"pid" placeholder:"FILE" help:"Write the daemon's PID to FILE."`
	VhostUser  bool   `name:"vhost-user" help:"Be a vhost-user back-end on the socket: QEMU connects with -chardev socket and -netdev vhost-user."`
	PrintCaps  bool   `name:"print-capabilities" help:"Print the vhost-user back-end's capabilities (JSON) and exit."`
	LendPages  bool   `name:"lend-pages" help:"Lend frames' pages to the unix socket (vmsplice) rather than copy them into it: less CPU per byte to the guest. Only for a client that reads the socket itself, as QEMU does, never one behind a relay that splice(2)s it on. On with --fd, whose client is QEMU's."`

	RepairPath      string `name:"repair-path" placeholder:"PATH" help:"Unix socket for a TCP_REPAIR helper (passt-repair, gopasst repair), for live migration over vhost-user; 'none' for none. Default: <socket>.repair."`
	MigrateExit     bool   `name:"migrate-exit" help:"Exit once the guest has migrated to the destination (vhost-user)."`
	MigrateNoLinger bool   `name:"migrate-no-linger" help:"Close migrated connections' sockets at once, as gopasst always does (vhost-user)."`

	// passt takes --no-splice in passt mode too, where nothing is spliced.
	NoSplice bool `name:"no-splice" help:"Accepted, as passt does: a VM's connections are never spliced."`
}

// cli is gopasst's command line: passt's, as the default command, and
// gopasst's own commands.
type cli struct {
	Serve   Options          `cmd:"" default:"withargs" help:"Serve a VM's network, as passt does (the default command)."`
	Pasta   pastaOptions     `cmd:"" name:"pasta" aliases:"ns" help:"Give a network namespace, or a program in a new one, its network, as pasta does (also run as 'pasta')."`
	Ctl     CtlOptions       `cmd:"" help:"Change a running gopasst's forwards through its control socket."`
	Guest   guestOptions     `cmd:"" help:"In a VM: relay a tap to gopasst on the host over vsock or a unix socket."`
	Repair  repairOptions    `cmd:"" help:"Set TCP_REPAIR for a back-end's live migration, as passt-repair does (needs CAP_NET_ADMIN)."`
	Man     struct{}         `cmd:"" hidden:"" help:"Print the manual page (roff)."`
	Version kong.VersionFlag `help:"Print the version and exit."`
}

func main() {
	if privilegedExec() {
		os.Exit(runPrivileged(os.Args[1:], os.Stdout, os.Stderr))
	}
	if code, ok := pastaChildren(); ok {
		os.Exit(code)
	}
	os.Exit(run(modeArgs(os.Args[0], os.Args[1:]), os.Stdout, os.Stderr))
}

// privilegedExec says whether the kernel started us with privileges our
// caller lacks: setuid or setgid, or, for a user other than root,
// capabilities from a file capability, such as the cap_net_admin that
// gopasst repair may be given. Each of these sets AT_SECURE; so does an
// SELinux domain change, which grants nothing (a policy may have passt
// run in a domain of its own).
func privilegedExec() bool {
	auxv, _ := unix.Auxv()
	secure := false
	for _, kv := range auxv {
		secure = secure || kv[0] == atSecure && kv[1] != 0
	}
	switch {
	case !secure:
		return false
	case os.Getuid() != os.Geteuid() || os.Getgid() != os.Getegid():
		return true
	case os.Getuid() == 0:
		return false
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var caps [2]unix.CapUserData
	err := unix.Capget(&hdr, &caps[0])
	return err != nil || caps[0].Permitted|caps[1].Permitted != 0
}

const atSecure = 23 // AT_SECURE, linux/auxvec.h

// runPrivileged runs gopasst repair alone, which takes nothing but its
// path: every other mode, and the processes gopasst re-executes itself
// as, act on the caller's options and environment, and would use the
// privileges with them (the pasta agent's plan, for one, would make and
// configure an interface in the caller's network namespace).
func runPrivileged(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "repair" {
		return fail(stderr, "started with privileges its caller lacks (setuid or a file capability): only 'gopasst repair' runs so")
	}
	return run(args, stdout, stderr)
}

func fail(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "gopasst: "+format+"\n", args...)
	return 1
}

func run(args []string, stdout, stderr io.Writer) int {
	var c cli
	ctx, done, code := parseArgs(&c, args, stdout, stderr)
	if done {
		return code
	}
	switch cmd := ctx.Command(); {
	case strings.HasPrefix(cmd, "pasta"):
		// "gopasst ns", pasta's command mode under its old name, keeps
		// its promise of a configured stack.
		c.Pasta.ConfigNet = c.Pasta.ConfigNet || args[0] == "ns"
		return runPasta(&c.Pasta, stderr)
	case strings.HasPrefix(cmd, "ctl"):
		return runCtl(&c.Ctl, stdout, stderr)
	case cmd == "guest":
		return runGuest(&c.Guest, stderr)
	case strings.HasPrefix(cmd, "repair"):
		return runRepair(&c.Repair, stderr)
	case cmd == "man":
		writeMan(stdout, ctx.Model)
		return 0
	}
	return runServe(&c.Serve, stdout, stderr)
}

// parseArgs parses args into c with kong. It reports done, with the exit
// code, after help or the version (kong printed them) or an error (one
// line on stderr).
func parseArgs(c *cli, args []string, stdout, stderr io.Writer) (ctx *kong.Context, done bool, code int) {
	exit := -1
	parser, err := kong.New(c, kong.Name("gopasst"),
		kong.Description("User-mode networking for virtual machines, compatible with passt."),
		kong.Vars{"version": "gopasst " + version, "mtu": strconv.Itoa(slirp.DefaultMTU),
			"max_tcp": strconv.Itoa(slirp.DefaultMaxTCP), "max_udp": strconv.Itoa(slirp.DefaultMaxUDP),
			"max_icmp": strconv.Itoa(slirp.DefaultMaxICMP), "cmd_max": strconv.Itoa(slirp.DefaultCmdMax)},
		kong.NamedMapper("mtu", kong.MapperFunc(decodeMTU)),
		kong.Writers(stdout, stderr), kong.Exit(func(code int) { exit = code }))
	if err != nil {
		return nil, true, fail(stderr, "%v", err)
	}
	args, err = expandAbbreviations(parser.Model, args)
	if err == nil && len(args) > 1 && strings.HasPrefix(args[0], "-") && args[0] != "--" &&
		slices.ContainsFunc(args, func(a string) bool { return a == "--help" || a == "-h" }) {
		// Options before --help are serve's (the default command), as
		// "passt -f --help" is passt's: show serve's help, not the
		// commands'.
		args = append([]string{"serve"}, args...)
	}
	if err == nil {
		ctx, err = parser.Parse(args)
	}
	switch {
	case exit >= 0:
		return nil, true, exit
	case err != nil && len(args) > 0 && (args[0] == "pasta" || args[0] == "ns"):
		return nil, true, pastaUsageError(stderr, err)
	case err != nil:
		return nil, true, fail(stderr, "%v", err)
	}
	return ctx, false, 0
}

// decodeMTU reads --mtu as passt's strtoul does: decimal, 0x hex or 0
// octal, and an empty value ("--mtu=$UNSET") as 0.
func decodeMTU(ctx *kong.DecodeContext, target reflect.Value) error {
	var s string
	if err := ctx.Scan.PopValueInto("mtu", &s); err != nil {
		return err
	}
	n := int64(0)
	if s != "" {
		var err error
		if n, err = strconv.ParseInt(s, 0, 32); err != nil || n < 0 {
			return fmt.Errorf("invalid MTU: %s", s)
		}
	}
	target.SetInt(n)
	return nil
}

// expandAbbreviations spells out long options as passt's getopt_long
// takes them: a prefix of one option's name, or of names of one option
// ("--sock" for --socket and --socket-path), stands for it ("--ipv4" is
// --ipv4-only), a prefix of several options' is refused as ambiguous.
// It reads passt's and pasta's options as getopt does, up to "--" or the
// first operand, and leaves gopasst's other commands alone.
func expandAbbreviations(app *kong.Application, args []string) ([]string, error) {
	cmd, skip := "serve", 0 // the default command
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, skip = args[0], 1
	}
	var node *kong.Node
	for _, c := range app.Children {
		if (c.Name == "serve" || c.Name == "pasta") && (c.Name == cmd || slices.Contains(c.Aliases, cmd)) {
			node = c
		}
	}
	if node == nil {
		return args, nil
	}
	long, short := map[string]*kong.Flag{}, map[rune]*kong.Flag{}
	for _, group := range node.AllFlags(false) {
		for _, f := range group {
			for _, n := range append([]string{f.Name}, f.Aliases...) {
				long[n] = f
			}
			if f.Short != 0 {
				short[f.Short] = f
			}
		}
	}
	out := slices.Clone(args)
	for i := skip; i < len(out); i++ {
		a := out[i]
		if a == "--" || a == "-" || !strings.HasPrefix(a, "-") {
			break
		}
		if !strings.HasPrefix(a, "--") {
			// Bundled short options: a value is the word's rest, or the
			// next word.
			for j, r := range a[1:] {
				if f := short[r]; f == nil || !f.IsBool() {
					if f != nil && j+2 == len(a) {
						i++
					}
					break
				}
			}
			continue
		}
		name, _, inline := strings.Cut(a[2:], "=")
		f := long[name]
		if f == nil {
			for n, g := range long {
				if strings.HasPrefix(n, name) && (f == nil || g == f) {
					f = g
				} else if strings.HasPrefix(n, name) {
					return nil, fmt.Errorf("option '--%s' is ambiguous", name)
				}
			}
			if f == nil {
				continue // unknown: the parser says so
			}
			out[i] = "--" + f.Name + strings.TrimPrefix(a, "--"+name)
		}
		if !f.IsBool() && !inline {
			i++
		}
	}
	return out, nil
}

// migrationOption names a migration option given, if any: "--repair-path
// none" asks for nothing.
func migrationOption(o *Options) string {
	switch {
	case o.RepairPath != "" && o.RepairPath != "none":
		return "--repair-path"
	case o.MigrateExit:
		return "--migrate-exit"
	case o.MigrateNoLinger:
		return "--migrate-no-linger"
	}
	return ""
}

// lendPages tells whether the stream client's frames are lent to its
// socket: asked for, or --fd's client, which is QEMU's own socket pair
// and reads it itself (never a relay that splices it on).
func lendPages(o *Options) bool { return !o.VhostUser && (o.LendPages || o.Fd >= 0) }

// runServe is passt's mode: serve one VM at a time.
func runServe(o *Options, stdout, stderr io.Writer) int {
	if o.PrintCaps {
		// What the vhost-user specification asks of a back-end.
		fmt.Fprint(stdout, "{\n  \"type\": \"net\"\n}\n")
		return 0
	}
	cfg, err := buildConfig(&o.NetOptions, thisHost)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if o.VhostUser {
		if o.Vsock != "" {
			return fail(stderr, "--vhost-user: the front-end connects to a unix socket (-s) or is given as --fd, never over vsock")
		}
		cfg.NewLink = qemusock.NewVhostUser
		cfg.MigrateExit = o.MigrateExit
		cfg.Migration = true
	} else if opt := migrationOption(o); opt != "" {
		// As passt: only a vhost-user back-end migrates.
		return fail(stderr, "%s is for vhost-user mode only", opt)
	}
	cfg.OneOff = o.OneOff || o.Fd >= 0
	if lendPages(o) {
		cfg.NewLink = qemusock.NewDetectLendingStream
	}
	// Check every forward before binding anything.
	for _, c := range []struct {
		opt   string
		specs []string
	}{{"-t", o.TCPPorts}, {"-u", o.UDPPorts}} {
		if err := checkModes(c.opt, c.specs, false, false); err != nil {
			return fail(stderr, "%v", err)
		}
	}
	if _, err := portSpecs(append(append([]string{}, o.TCPPorts...), o.UDPPorts...)); err != nil {
		return fail(stderr, "%v", err)
	}
	if env, ok := engineEnvironment(); ok {
		return runEngine(&o.NetOptions, cfg, env, o.Vsock, nil)
	}
	if d := os.Getenv(envDaemon); d != "" {
		return daemonChild(o, d)
	}
	return start(o, stderr)
}

// start binds the socket, then either serves in the foreground or hands
// the socket to a daemon and exits once the daemon is ready: libvirt waits
// for this process to exit 0 and then trusts the PID file.
func start(o *Options, stderr io.Writer) int {
	if o.Vsock != "" || o.Fd >= 0 {
		return startListenless(o, stderr)
	}
	path := o.Socket
	if path == "" {
		p, err := qemusock.DefaultPath(defaultSocket(os.Args[0]))
		if err != nil {
			return fail(stderr, "%v", err)
		}
		path = p
	}
	lfd, err := qemusock.Listen(path)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	sock := own(path)
	info := o.info(stderr)
	fmt.Fprintf(info, "UNIX domain socket bound at %s\n\n", path)
	fmt.Fprintf(info, "You can now start qemu (>= 7.2) with:\n")
	if o.VhostUser {
		fmt.Fprintf(info, "    qemu-system-x86_64 ... -m 1G -object memory-backend-memfd,id=mem,size=1G,share=on "+
			"-numa node,memdev=mem -chardev socket,id=c,path=%s -netdev vhost-user,id=v,chardev=c "+
			"-device virtio-net-pci,netdev=v\n", path)
	} else {
		fmt.Fprintf(info, "    qemu-system-x86_64 ... -device virtio-net-pci,netdev=s "+
			"-netdev stream,id=s,server=off,addr.type=unix,addr.path=%s\n", path)
	}
	if o.Foreground {
		return supervise(&o.NetOptions, o.engineRun(lfd, sock, true), stderr, func() {})
	}
	return daemonize(o, lfd, sock, stderr)
}

// info is where start-up messages go: standard error, unless --quiet,
// which passt's leave out too.
func (o *Options) info(stderr io.Writer) io.Writer {
	if o.Quiet {
		return io.Discard
	}
	return stderr
}

// defaultSocket is where the socket goes when -s names none: run as
// passt, where passt puts its own, /tmp/passt_N.socket, which passt's
// documentation and its users' QEMU command lines name; else
// gopasst_N.socket in the runtime directory ($XDG_RUNTIME_DIR, else
// /tmp).
func defaultSocket(argv0 string) (dir, pattern string) {
	if runAs(argv0, "passt") {
		return "/tmp", "passt_%d.socket"
	}
	return cmp.Or(os.Getenv("XDG_RUNTIME_DIR"), os.TempDir()), "gopasst_%d.socket"
}

// startListenless is start without a unix socket to bind: for --vsock,
// whose listener is made where the engine runs (mdlayher/vsock keeps its
// descriptor), so a daemon reports a failure to listen through its
// readiness pipe; and for --fd, whose connected socket goes to the
// daemon as the listening one would.
func startListenless(o *Options, stderr io.Writer) int {
	if (o.Vsock != "") == (o.Fd >= 0) || o.Socket != "" {
		return fail(stderr, "--socket, --vsock and --fd: one of them")
	}
	if o.Vsock != "" {
		if _, _, err := parseVsockAddr(o.Vsock, true); err != nil {
			return fail(stderr, "%v", err)
		}
		fmt.Fprintf(o.info(stderr), "vsock: listening on port %s\n\n", o.Vsock)
		fmt.Fprintf(o.info(stderr), "In the guest, run:\n    gopasst guest --vsock 2:%s\n", o.Vsock[strings.LastIndex(o.Vsock, ":")+1:])
	} else if _, err := unix.FcntlInt(uintptr(o.Fd), unix.F_GETFD, 0); err != nil {
		return fail(stderr, "--fd %d: %v", o.Fd, err)
	}
	if !o.Foreground {
		return daemonize(o, o.Fd, ownedFile{}, stderr)
	}
	return supervise(&o.NetOptions, o.engineRun(o.Fd, ownedFile{}, true), stderr, func() {})
}

// engineRun says how the engine serves the guest: on the listening
// socket sock, on the connected socket --fd, or on --vsock.
func (o *Options) engineRun(fd int, sock ownedFile, foreground bool) engineRun {
	r := engineRun{link: fd, kind: linkListen, sock: sock, pidFile: o.PidFile, foreground: foreground}
	switch {
	case o.Vsock != "":
		r.link, r.kind = -1, linkNone
	case o.Fd >= 0:
		r.kind = linkStream
	}
	// The TCP_REPAIR helper's socket: passt's default is beside the
	// vhost-user socket; --fd has none to be beside.
	switch {
	case !o.VhostUser || o.RepairPath == "none":
	case o.RepairPath != "":
		r.repair = o.RepairPath
	case sock.path != "":
		r.repair = sock.path + ".repair"
	}
	return r
}

// raiseFdLimit lets gopasst use every descriptor its hard limit allows,
// as passt does: each guest flow is one, and the caps (--max-tcp, ...)
// are what bounds them.
func raiseFdLimit() {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
}

// logName is the name gopasst logs to syslog under: passt's or pasta's
// when installed as one of them, where their messages are looked for
// (journalctl -t passt), else its own.
func logName(argv0 string) string {
	for _, name := range []string{"passt", "pasta"} {
		if runAs(argv0, name) {
			return name
		}
	}
	return "gopasst"
}

// openLog is the engine's logger: the bounded log file the helper opened
// (logFd, or -1), else syslog, connected now (the sandbox has no
// /dev/log); and, in the foreground, standard error too, as passt's.
// Standard error has no timestamps but with --debug or --trace, as
// passt's: callers read its lines (startSummary).
func openLog(o *NetOptions, logFd int, foreground bool) (*log.Logger, error) {
	var outs []io.Writer
	switch {
	case logFd >= 0:
		f, err := logfile.New(os.NewFile(uintptr(logFd), "log"), o.LogSize, "gopasst "+version+" log")
		if err != nil {
			return nil, fmt.Errorf("--log-file: %v", err)
		}
		outs = append(outs, stamped{f})
	case o.Silent || foreground || o.Stderr:
	default:
		if w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, logName(os.Args[0])); err == nil {
			outs = append(outs, w)
		}
	}
	switch {
	case o.Silent || !foreground && !o.Stderr:
	case o.Debug || o.Trace:
		outs = append(outs, stamped{os.Stderr})
	default:
		outs = append(outs, os.Stderr)
	}
	return log.New(io.MultiWriter(outs...), "", 0), nil
}

// stamped writes each line the logger gives it after the time, to the
// microsecond.
type stamped struct{ w io.Writer }

func (s stamped) Write(p []byte) (int, error) {
	var b [64]byte
	line := append(time.Now().AppendFormat(b[:0], "2006/01/02 15:04:05.000000 "), p...)
	if _, err := s.w.Write(line); err != nil {
		return 0, err
	}
	return len(p), nil
}
