// Command gopasst is a user-mode network backend for virtual machines, a
// drop-in for passt: QEMU connects to its unix socket with
// "-netdev stream" and the guest gets a full network with no privileges.
package main

import (
	"fmt"
	"io"
	"log"
	"log/syslog"
	"os"
	"os/signal"
	"strconv"
	"strings"

	"github.com/alecthomas/kong"
	"github.com/gopasst/gopasst/pkg/logfile"
	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// Options are passt's, spelled as passt spells them, plus gopasst's own
// extensions. Lists are never split on commas: port specs contain commas.
type Options struct {
	Debug      bool   `short:"d" help:"Print debugging messages."`
	Trace      bool   `help:"Print per-packet messages (implies --debug)."`
	Quiet      bool   `short:"q" help:"Only print warnings and errors."`
	Foreground bool   `short:"f" help:"Stay in the foreground instead of daemonizing."`
	Stderr     bool   `short:"e" help:"Log to standard error even when daemonized."`
	LogFile    string `short:"l" name:"log-file" placeholder:"PATH" help:"Log to PATH, kept under --log-size."`
	LogSize    int64  `name:"log-size" default:"1048576" placeholder:"BYTES" help:"Bound for --log-file."`
	Version    bool   `help:"Print the version and exit."`

	Socket  string `short:"s" placeholder:"PATH" help:"Unix socket to listen on (default: first free gopasst_N.socket in the runtime directory)."`
	Vsock   string `name:"vsock" placeholder:"[CID:]PORT" help:"Listen on AF_VSOCK (any CID by default) instead of a unix socket, for 'gopasst guest' or gvforwarder in a VM."`
	OneOff  bool   `short:"1" name:"one-off" help:"Exit when the first client disconnects."`
	PidFile string `short:"P" name:"pid" placeholder:"FILE" help:"Write the daemon's PID to FILE."`

	MTU        int      `short:"m" default:"65520" help:"MTU given to the guest."`
	Address    []string `short:"a" sep:"none" placeholder:"ADDR" help:"Guest address, IPv4 or IPv6 (default: the host's). Repeatable."`
	Netmask    string   `short:"n" placeholder:"MASK" help:"IPv4 prefix length or dotted mask."`
	MAC        string   `short:"M" name:"mac-addr" default:"9a:55:9a:55:9a:55" placeholder:"MAC" help:"gopasst's own MAC address."`
	Gateway    []string `short:"g" sep:"none" placeholder:"ADDR" help:"Gateway given to the guest, IPv4 or IPv6 (default: the host's). Repeatable."`
	Interface  string   `short:"i" placeholder:"NAME" help:"Template interface (default: the one with the default route)."`
	DNS        []string `short:"D" name:"dns" sep:"none" placeholder:"ADDR" help:"Resolver given to the guest; 'none' for none. Repeatable."`
	DNSForward []string `name:"dns-forward" sep:"none" placeholder:"ADDR" help:"Address whose DNS queries go to the host's first resolver; one per family."`
	Search     []string `short:"S" sep:"none" placeholder:"DOMAIN" help:"Search domain given to the guest; 'none' for none. Repeatable."`
	Hostname   string   `short:"H" placeholder:"NAME" help:"Hostname given to the guest by DHCP."`
	FQDN       string   `name:"fqdn" placeholder:"NAME" help:"FQDN given to the guest by DHCP."`

	NoDHCP   bool `name:"no-dhcp" help:"Do not answer DHCP."`
	NoMapGW  bool `name:"no-map-gw" help:"Do not map the gateway address to the host's loopback."`
	NoTCP    bool `name:"no-tcp" help:"Disable TCP."`
	NoUDP    bool `name:"no-udp" help:"Disable UDP."`
	NoICMP   bool `name:"no-icmp" help:"Disable ICMP echo."`
	NoNDP    bool `name:"no-ndp" help:"Do not answer NDP (neither solicitations nor RAs)."`
	NoRA     bool `name:"no-ra" help:"Do not send Router Advertisements."`
	NoDHCPv6 bool `name:"no-dhcpv6" help:"Do not answer DHCPv6."`
	IPv4     bool `short:"4" name:"ipv4-only" help:"IPv4 only."`
	IPv6     bool `short:"6" name:"ipv6-only" help:"IPv6 only."`

	VhostUser bool `name:"vhost-user" help:"Not supported yet: exits with an error."`

	TCPPorts []string `short:"t" name:"tcp-ports" sep:"none" placeholder:"SPEC" help:"Forward host TCP ports to the guest (passt's grammar). Repeatable."`
	UDPPorts []string `short:"u" name:"udp-ports" sep:"none" placeholder:"SPEC" help:"Forward host UDP ports to the guest (passt's grammar). Repeatable."`
	Control  string   `name:"control" placeholder:"PATH" help:"Unix socket (mode 0600) for changing forwards at runtime; see 'gopasst ctl'."`
	UnixFwd  []string `name:"unix-fwd" sep:"none" placeholder:"PORT:PATH" help:"Guest connections to the gateway on PORT go to the host unix socket PATH. Repeatable."`
	CmdFwd   []string `name:"cmd-fwd" sep:"none" placeholder:"PORT:COMMAND" help:"Guest connections to the gateway on PORT run COMMAND on stdin/stdout. Repeatable."`
}

func main() {
	if js := os.Getenv(envNSChild); js != "" {
		os.Exit(nsChild(js))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func fail(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "gopasst: "+format+"\n", args...)
	return 1
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "ctl" {
		return runCtl(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "ns" {
		return runNS(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "guest" {
		return runGuest(args[1:], stdout, stderr)
	}
	var o Options
	if done, code := parseArgs(&o, "gopasst", "User-mode networking for virtual machines, compatible with passt.",
		args, stdout, stderr); done {
		return code
	}
	if o.Version {
		fmt.Fprintf(stdout, "gopasst %s\n", version)
		return 0
	}
	if o.VhostUser {
		return fail(stderr, "--vhost-user: vhost-user is not supported yet")
	}
	cfg, err := buildConfig(&o, procFiles)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	// Check every forward before binding anything.
	if _, err := portSpecs(append(append([]string{}, o.TCPPorts...), o.UDPPorts...)); err != nil {
		return fail(stderr, "%v", err)
	}
	if d := os.Getenv(envDaemon); d != "" {
		return daemonChild(&o, cfg, d)
	}
	return start(&o, cfg, stderr)
}

// parseArgs parses args into target with kong. It reports done, with the
// exit code, for a help request (kong has printed the help) or an error
// (one line on stderr).
func parseArgs(target any, name, desc string, args []string, stdout, stderr io.Writer) (done bool, code int) {
	parser, err := kong.New(target, kong.Name(name), kong.Description(desc),
		kong.Writers(stdout, stderr), kong.Exit(func(int) {}))
	if err != nil {
		return true, fail(stderr, "%v", err)
	}
	_, err = parser.Parse(args)
	switch {
	case isHelp(args):
		return true, 0
	case err != nil:
		return true, fail(stderr, "%v", err)
	}
	return false, 0
}

// isHelp reports a help request; kong has printed the help by then.
func isHelp(args []string) bool {
	for _, a := range args {
		if a == "-h" || a == "--help" {
			return true
		}
		if a == "--" {
			break
		}
	}
	return false
}

// start binds the socket, then either serves in the foreground or hands
// the socket to a daemon and exits once the daemon is ready: libvirt waits
// for this process to exit 0 and then trusts the PID file.
func start(o *Options, cfg netSetup, stderr io.Writer) int {
	if o.Vsock != "" {
		return startVsock(o, cfg, stderr)
	}
	path := o.Socket
	if path == "" {
		p, err := qemusock.DefaultPath()
		if err != nil {
			return fail(stderr, "%v", err)
		}
		path = p
	}
	lfd, err := qemusock.Listen(path)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	fmt.Fprintf(stderr, "UNIX domain socket bound at %s\n\n", path)
	fmt.Fprintf(stderr, "You can now start qemu (>= 7.2) with:\n")
	fmt.Fprintf(stderr, "    qemu-system-x86_64 ... -device virtio-net-pci,netdev=s "+
		"-netdev stream,id=s,server=off,addr.type=unix,addr.path=%s\n", path)
	if o.Foreground {
		if err := writePidFile(o.PidFile, os.Getpid()); err != nil {
			os.Remove(path)
			return fail(stderr, "%v", err)
		}
		logger, closeLog, err := openLog(o, stderr)
		if err != nil {
			os.Remove(path)
			return fail(stderr, "%v", err)
		}
		defer closeLog()
		return serve(o, cfg, lfd, path, logger, stderr, func() {})
	}
	return daemonize(o, lfd, path, stderr)
}

// startVsock is start for --vsock: the listener is made where the engine
// runs (mdlayher/vsock keeps its descriptor), so a daemon reports a
// failure to listen through its readiness pipe.
func startVsock(o *Options, cfg netSetup, stderr io.Writer) int {
	if o.Socket != "" {
		return fail(stderr, "--vsock and --socket: one or the other")
	}
	if _, _, err := parseVsockAddr(o.Vsock, true); err != nil {
		return fail(stderr, "%v", err)
	}
	fmt.Fprintf(stderr, "vsock: listening on port %s\n\n", o.Vsock)
	fmt.Fprintf(stderr, "In the guest, run:\n    gopasst guest --vsock 2:%s\n", o.Vsock[strings.LastIndex(o.Vsock, ":")+1:])
	if !o.Foreground {
		return daemonize(o, -1, "", stderr)
	}
	if err := writePidFile(o.PidFile, os.Getpid()); err != nil {
		return fail(stderr, "%v", err)
	}
	logger, closeLog, err := openLog(o, stderr)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer closeLog()
	return serve(o, cfg, -1, "", logger, stderr, func() {})
}

// serve runs the engine until SIGTERM, SIGINT, or a one-off client's exit.
// It calls ready once the engine exists and signals are handled, so a
// SIGTERM right after start-up still cleans up.
func serve(o *Options, cfg netSetup, lfd int, path string, logger *log.Logger, stderr io.Writer, ready func()) int {
	defer os.Remove(path)
	if o.PidFile != "" {
		defer os.Remove(o.PidFile)
	}
	eng, cleanup, err := startEngine(o, cfg, lfd, logger)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer cleanup()
	if o.Vsock != "" {
		closeVsock, err := listenVsock(o.Vsock, eng, logger)
		if err != nil {
			return fail(stderr, "%v", err)
		}
		defer closeVsock()
	}
	logger.Printf("gopasst %s: MTU %d", version, cfg.MTU)
	if cfg.Addr4.IsValid() {
		logger.Printf("IPv4: guest %v/%d, gateway %v, DNS %v", cfg.Addr4, cfg.Prefix4, cfg.Gateway4, cfg.DNS4)
	}
	if cfg.Addr6.IsValid() {
		logger.Printf("IPv6: guest %v, gateway %v, link-local %v, DNS %v", cfg.Addr6, cfg.Gateway6, cfg.OurLL6, cfg.DNS6)
	}
	for _, n := range cfg.notes {
		logger.Print(n)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	go func() {
		s := <-sig
		logger.Printf("exiting on %v", s)
		eng.Stop()
	}()
	ready()
	if err := eng.Run(); err != nil {
		logger.Printf("%v", err)
		return 1
	}
	return 0
}

// startEngine creates the engine for cfg (on listening socket lfd, or
// none) with o's logging, forwards and control socket, for the daemon and
// for namespace mode alike. cleanup removes the control socket.
func startEngine(o *Options, cfg netSetup, lfd int, logger *log.Logger) (*slirp.Engine, func(), error) {
	cfg.Debug = o.Debug || o.Trace
	cfg.Trace = o.Trace
	cfg.Log = logger
	eng, err := slirp.New(cfg.Config, lfd)
	if err != nil {
		return nil, nil, err
	}
	fwds := ctlRequest{TCP: o.TCPPorts, UDP: o.UDPPorts, UnixFwd: o.UnixFwd, CmdFwd: o.CmdFwd}
	if err := addForwards(eng, &fwds); err != nil {
		return nil, nil, err
	}
	if o.Control == "" {
		return eng, func() {}, nil
	}
	l, err := listenControl(o.Control)
	if err != nil {
		return nil, nil, err
	}
	go serveControl(l, eng)
	return eng, func() { os.Remove(o.Control) }, nil
}

// openLog picks where messages go: the bounded log file, standard error in
// the foreground, otherwise syslog when it is there.
func openLog(o *Options, stderr io.Writer) (*log.Logger, func(), error) {
	var out io.Writer = io.Discard
	closer := func() {}
	switch {
	case o.LogFile != "":
		f, err := logfile.Open(o.LogFile, o.LogSize, "gopasst "+version+" log")
		if err != nil {
			return nil, nil, fmt.Errorf("--log-file: %v", err)
		}
		out, closer = f, func() { f.Close() }
	case o.Foreground || o.Stderr:
		out = stderr
	default:
		if w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "gopasst"); err == nil {
			out, closer = w, func() { w.Close() }
		}
	}
	if o.Quiet && o.LogFile == "" {
		out = io.Discard
	}
	return log.New(out, "", log.LstdFlags|log.Lmicroseconds), closer, nil
}

func writePidFile(path string, pid int) error {
	if path == "" {
		return nil
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("--pid: %v", err)
	}
	return nil
}
