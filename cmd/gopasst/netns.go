package main

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"unsafe"

	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// "gopasst ns": a program with a network stack of its own, after
// libvdestack and passt's pasta. gopasst starts the program in new
// network and mount namespaces (and a user namespace when not root, so
// no privilege is needed), where a tap device is its only interface, and
// serves that tap as it would serve a QEMU guest: the same addresses, DNS,
// gateway mapping and port forwards.

const (
	envNSChild = "GOPASST_NS_CHILD" // set in the child: its nsSetup, as JSON
	nsTapName  = "tap0"
	nsFdSock   = 3 // the child's end of the socket the tap goes back over
)

// nsSetup is what the child needs to configure its namespace.
type nsSetup struct {
	MTU      int
	Addr4    netip.Prefix // invalid without IPv4; IPv6 comes from our RA
	Gateway4 netip.Addr
	Resolv   string // what to mount over /etc/resolv.conf, or "" for the host's
}

// nsOptions are the ns command's: the network, and the program.
type nsOptions struct {
	NetOptions `embed:""`

	Command []string `arg:"" optional:"" passthrough:"partial" help:"The program and its arguments, after -- (default: $SHELL)."`
}

// runNS runs the program (by default $SHELL) in a namespace served by the
// engine and returns its exit status.
func runNS(o *nsOptions, stderr io.Writer) int {
	command := o.Command
	if len(command) > 0 && command[0] == "--" {
		command = command[1:]
	}
	if len(command) == 0 {
		command = []string{cmp.Or(os.Getenv("SHELL"), "/bin/sh")}
	}
	cfg, err := buildConfig(&o.NetOptions, procFiles)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	// The command owns the terminal: the engine logs to --log-file, or to
	// stderr only with --debug.
	lo := o.NetOptions
	lo.Quiet = !(o.Debug || o.Trace)
	if env, ok := engineEnvironment(); ok {
		return runEngine(&lo, cfg, env, "")
	}
	setup := nsSetup{MTU: cfg.MTU, Gateway4: cfg.Gateway4, Resolv: resolvConfFor(&cfg.Config)}
	if cfg.Addr4.IsValid() {
		setup.Addr4 = netip.PrefixFrom(cfg.Addr4, cfg.Prefix4)
	}
	cmd, tapFd, err := startNSChild(setup, command)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	return serveNS(&lo, cmd, tapFd, stderr)
}

// resolvConfFor is the resolv.conf the program sees: the resolvers and
// search list a guest would get by DHCP. The host's own may name a
// loopback resolver, which the namespace cannot reach.
func resolvConfFor(cfg *slirp.Config) string {
	var b strings.Builder
	for _, d := range append(append([]netip.Addr{}, cfg.DNS4...), cfg.DNS6...) {
		fmt.Fprintf(&b, "nameserver %v\n", d)
	}
	if b.Len() > 0 && len(cfg.Search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(cfg.Search, " "))
	}
	return b.String()
}

// startNSChild re-executes gopasst in new namespaces to configure them
// and exec the command, and returns the tap it created there.
func startNSChild(setup nsSetup, command []string) (*exec.Cmd, int, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, -1, err
	}
	defer unix.Close(pair[0])
	child := os.NewFile(uintptr(pair[1]), "ns")
	defer child.Close()
	self, err := os.Executable()
	if err != nil {
		return nil, -1, err
	}
	js, _ := json.Marshal(setup)
	cmd := exec.Command(self)
	cmd.Args = command // the child's os.Args: it execs exactly these
	cmd.Env = append(os.Environ(), envNSChild+"="+string(js))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{child}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNET | unix.CLONE_NEWNS}
	if uid, gid := os.Geteuid(), os.Getegid(); uid != 0 {
		// Root in a user namespace of our own: enough to make a tap and
		// configure it, and nothing outside it.
		cmd.SysProcAttr.Cloneflags |= unix.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}}
	}
	if err := cmd.Start(); err != nil {
		return nil, -1, fmt.Errorf("new namespaces: %w", err)
	}
	child.Close()
	fd, err := recvFd(pair[0])
	if err != nil {
		cmd.Wait()
		return nil, -1, fmt.Errorf("setting up the namespace failed (%v)", err)
	}
	return cmd, fd, nil
}

// serveNS runs the engine on the tap until the command exits, and returns
// its exit status.
func serveNS(o *NetOptions, cmd *exec.Cmd, tapFd int, stderr io.Writer) int {
	// The terminal's ^C reaches the command itself (the engine has a
	// process group of its own); a signal aimed at us goes on to the
	// command, and its exit ends the engine.
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	r := engineRun{link: tapFd, kind: linkTap, foreground: true, cmdDone: done,
		signal: func(s os.Signal) {
			if s != unix.SIGINT {
				cmd.Process.Signal(s)
			}
		}}
	if code := supervise(o, r, stderr, func() {}); code != 0 {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
			return code
		}
	}
	<-done
	return exitStatus(cmd.ProcessState)
}

// nsChild runs in the new namespaces: it configures them, hands the tap to
// the parent and becomes the command.
func nsChild(js string) int {
	var s nsSetup
	if err := json.Unmarshal([]byte(js), &s); err != nil {
		return fail(os.Stderr, "namespace set-up: %v", err)
	}
	tap, err := nsConfigure(&s)
	if err == nil {
		err = unix.Sendmsg(nsFdSock, []byte{0}, unix.UnixRights(tap), nil, 0)
	}
	if err != nil {
		return fail(os.Stderr, "namespace set-up: %v", err)
	}
	unix.Close(tap)
	unix.Close(nsFdSock)
	path, err := exec.LookPath(os.Args[0])
	if err != nil {
		return fail(os.Stderr, "%v", err)
	}
	env := make([]string, 0, len(os.Environ()))
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, envNSChild+"=") {
			env = append(env, e)
		}
	}
	err = unix.Exec(path, os.Args, env)
	return fail(os.Stderr, "%s: %v", os.Args[0], err)
}

// nsConfigure brings up loopback, creates the tap with the MTU, the IPv4
// address and the default route (IPv6 configures itself from our RA), and
// mounts our resolv.conf.
func nsConfigure(s *nsSetup) (int, error) {
	if s.Resolv != "" {
		if err := mountResolv(s.Resolv); err != nil {
			return -1, err
		}
	}
	if err := linkUp("lo", 0); err != nil {
		return -1, err
	}
	tap, err := openTap(nsTapName)
	if err != nil {
		return -1, err
	}
	if err := linkUp(nsTapName, s.MTU); err != nil {
		unix.Close(tap)
		return -1, err
	}
	if s.Addr4.IsValid() {
		ifi, err := net.InterfaceByName(nsTapName)
		if err == nil {
			err = addAddr4(ifi.Index, s.Addr4)
		}
		if err == nil {
			err = addDefaultRoute4(ifi.Index, s.Gateway4)
		}
		if err != nil {
			unix.Close(tap)
			return -1, err
		}
	}
	return tap, nil
}

// openTap creates the tap device name in the current network namespace
// (or opens it, if it exists) as a non-blocking descriptor, frames only
// (no packet information).
func openTap(name string) (int, error) {
	tap, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(tap)
		return -1, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(tap, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(tap)
		return -1, fmt.Errorf("%s: TUNSETIFF: %w", name, err)
	}
	return tap, nil
}

// mountResolv puts content over /etc/resolv.conf in our mount namespace.
// The file lives on a tmpfs mounted over /tmp just long enough to bind it
// in place: nothing is written to the host's disk, and /tmp is as before.
func mountResolv(content string) error {
	const scratch = "/tmp"
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("mount namespace: %w", err)
	}
	if err := unix.Mount("tmpfs", scratch, "tmpfs", 0, "size=64k"); err != nil {
		return fmt.Errorf("tmpfs: %w", err)
	}
	defer unix.Unmount(scratch, unix.MNT_DETACH)
	p := scratch + "/resolv.conf"
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		return err
	}
	if err := unix.Mount(p, "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	return nil
}

// linkUp sets an interface's MTU (unless 0) and brings it up.
func linkUp(name string, mtu int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, _ := unix.NewIfreq(name)
	if mtu != 0 {
		ifr.SetUint32(uint32(mtu))
		if err := unix.IoctlIfreq(fd, unix.SIOCSIFMTU, ifr); err != nil {
			return fmt.Errorf("%s: MTU %d: %w", name, mtu, err)
		}
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("%s up: %w", name, err)
	}
	return nil
}

// addAddr4 gives interface index its IPv4 address (RTM_NEWADDR).
func addAddr4(index int, p netip.Prefix) error {
	msg := make([]byte, unix.SizeofIfAddrmsg)
	*(*unix.IfAddrmsg)(unsafe.Pointer(&msg[0])) = unix.IfAddrmsg{
		Family: unix.AF_INET, Prefixlen: uint8(p.Bits()), Index: uint32(index)}
	a := p.Addr().As4()
	msg = rtAttr(msg, unix.IFA_LOCAL, a[:])
	msg = rtAttr(msg, unix.IFA_ADDRESS, a[:])
	return netlinkDo(unix.RTM_NEWADDR, msg)
}

// addDefaultRoute4 routes everything through gw on interface index
// (RTM_NEWROUTE), with the on-link flag: the gateway may lie outside a
// narrow prefix, as it does when the host's address is a /32.
func addDefaultRoute4(index int, gw netip.Addr) error {
	msg := make([]byte, unix.SizeofRtMsg)
	*(*unix.RtMsg)(unsafe.Pointer(&msg[0])) = unix.RtMsg{
		Family: unix.AF_INET, Table: unix.RT_TABLE_MAIN, Protocol: unix.RTPROT_BOOT,
		Scope: unix.RT_SCOPE_UNIVERSE, Type: unix.RTN_UNICAST, Flags: unix.RTNH_F_ONLINK}
	g := gw.As4()
	msg = rtAttr(msg, unix.RTA_GATEWAY, g[:])
	msg = rtAttr(msg, unix.RTA_OIF, binary.NativeEndian.AppendUint32(nil, uint32(index)))
	return netlinkDo(unix.RTM_NEWROUTE, msg)
}

// rtAttr appends a route attribute, padded to four bytes.
func rtAttr(b []byte, typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	return append(b, make([]byte, (4-l%4)%4)...)
}

// netlinkDo sends one route netlink request and waits for its
// acknowledgement.
func netlinkDo(typ uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	*(*unix.NlMsghdr)(unsafe.Pointer(&msg[0])) = unix.NlMsghdr{
		Len: uint32(unix.SizeofNlMsghdr + len(body)), Type: typ, Seq: 1,
		Flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK | unix.NLM_F_CREATE | unix.NLM_F_EXCL}
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	if n < unix.SizeofNlMsghdr+4 || binary.NativeEndian.Uint16(buf[4:]) != unix.NLMSG_ERROR {
		return fmt.Errorf("netlink: unexpected answer")
	}
	if code := int32(binary.NativeEndian.Uint32(buf[unix.SizeofNlMsghdr:])); code != 0 {
		return fmt.Errorf("netlink request %d: %w", typ, unix.Errno(-code))
	}
	return nil
}

// recvFd receives one descriptor passed with SCM_RIGHTS.
func recvFd(sock int) (int, error) {
	_, fds, err := recvMsg(sock, make([]byte, 1), 1)
	if err == nil && len(fds) == 1 {
		return fds[0], nil
	}
	closeFds(fds)
	if err == nil {
		err = fmt.Errorf("no descriptor from the namespace")
	}
	return -1, err
}
