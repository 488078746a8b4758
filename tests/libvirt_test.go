package tests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestLibvirt runs gopasst as libvirt's passt backend: libvirtd (from
// bookworm-backports, started by hand: there is no systemd) finds gopasst
// as "passt" first in its PATH. A QEMU guest (TCG, direct kernel boot of
// the busybox initramfs) gets the XML's address, reaches a host service
// through the gateway and serves a forwarded port, and gopasst logs to
// the logFile directory of contrib/libvirt's example (a logFile in
// /var/log stops the domain from starting, as it does with passt). The
// guest talks only to the gateway, which is the host's loopback. It runs
// twice: with <interface type='user'> (the stream socket) and with
// <interface type='vhostuser'> and shared guest memory (libvirt ≥ 11.1).
func TestLibvirt(t *testing.T) {
	for _, vhost := range []bool{false, true} {
		t.Run(map[bool]string{false: "user", true: "vhostuser"}[vhost], func(t *testing.T) { testLibvirt(t, vhost) })
	}
}

func testLibvirt(t *testing.T, vhost bool) {
	needRoot(t)
	for _, bin := range []string{"virsh", "libvirtd", "virtlogd", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s (libvirt from bookworm-backports; make deps installs it)", bin)
		}
	}
	kernel, kver, err := debianKernel()
	if err != nil {
		t.Skip(err)
	}
	// Everything libvirt's unprivileged QEMU and passt processes touch
	// lives in a world-readable directory.
	needReachable(t)
	dir := sharedDir(t)
	shim := filepath.Join(dir, "bin")
	os.Mkdir(shim, 0o755)
	copyFile(t, gopasstBin, filepath.Join(shim, "passt"), 0o755)

	startLibvirtd(t, shim)

	// A host service on loopback, answering with a counter.
	hostSvc, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hostSvc.Close() })
	var served atomic.Int64
	acceptLoop(hostSvc, func(c net.Conn) {
		fmt.Fprintf(c, "host-%d\n", served.Add(1))
		c.Close()
	})
	gw := defaultGateway(t)
	script := fmt.Sprintf(`
`+guestDHCPScript+`ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -f -q -n -t 20 -T 2 -s /etc/dhcp.sh
printf '#!/bin/sh\necho hello-from-guest\n' > /bin/hello; chmod +x /bin/hello
nc -ll -p 8080 -e /bin/hello &
nc -ll -p 8082 -e /bin/hello &
while true; do echo "GOPASST-HOST $(nc -w 3 %s %s)"; sleep 2; done
`, gw, port(hostSvc.Addr()))
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := buildInitramfs(initrd, kver, script, nil); err != nil {
		t.Fatal(err)
	}
	kcopy := filepath.Join(dir, "vmlinuz")
	copyFile(t, kernel, kcopy, 0o644)
	console := filepath.Join(dir, "console.log")
	name := fmt.Sprintf("gopasst-test-%d", os.Getpid())
	passtLog := exampleLogFile(t, name)
	iface, memory := "user", ""
	if vhost {
		iface, memory = "vhostuser", "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
	}
	xml := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>512</memory>
  %s
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <interface type='%s'>
      <mac address='52:54:00:a8:33:fc'/>
      <ip address='192.0.2.50' family='ipv4' prefix='24'/>
      <model type='virtio'/>
      <backend type='passt' logFile='%s'/>
      <portForward proto='tcp' address='127.0.0.1'>
        <range start='18080' end='18082' to='8080'/>
        <range start='18081' exclude='yes'/>
      </portForward>
    </interface>
  </devices>
</domain>
`, name, memory, kcopy, initrd, console, iface, passtLog)
	xmlPath := filepath.Join(dir, "domain.xml")
	t.Cleanup(func() {
		exec.Command("virsh", "destroy", name).Run()
		exec.Command("virsh", "undefine", name).Run()
		// Should libvirtd be gone, its QEMU and gopasst are not: end
		// whatever still carries this test's domain name or directory.
		exec.Command("pkill", "-9", "-f", "guest="+name+",").Run()
		exec.Command("pkill", "-9", "-f", dir).Run()
		// libvirt names gopasst's socket after the domain.
		exec.Command("pkill", "-9", "-f", "/passt/[0-9]+-"+name+"-net0").Run()
	})
	if !vhost {
		libvirtLogInVarLog(t, strings.Replace(xml, passtLog, "/var/log/"+name+".log", 1), xmlPath)
	}
	os.WriteFile(xmlPath, []byte(xml), 0o644)
	virsh(t, "define", xmlPath)
	virsh(t, "start", name)

	consoleHas := func(re string) bool {
		data, _ := os.ReadFile(console)
		return regexp.MustCompile(re).Match(data)
	}
	waitLong(t, "guest lease", 3*time.Minute, func() bool { return consoleHas(`GOPASST-LEASE ip=192\.0\.2\.50 mask=24`) })
	waitLong(t, "guest reaching the host", time.Minute, func() bool { return consoleHas(`GOPASST-HOST host-\d+`) })

	if got, err := hostRead("127.0.0.1:18080"); err != nil || got != "hello-from-guest" {
		t.Errorf("forwarded port 18080: %q, %v", got, err)
	}
	if got, err := hostRead("127.0.0.1:18082"); err != nil || got != "hello-from-guest" {
		t.Errorf("forwarded port 18082: %q, %v", got, err)
	}
	if _, err := hostRead("127.0.0.1:18081"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("excluded port 18081: %v, want connection refused", err)
	}
	// The example's logFile directory works as copied: gopasst, run by
	// libvirt as the QEMU user, logs there.
	if log := readFile(passtLog); !strings.HasPrefix(log, "gopasst ") || !strings.Contains(log, "    assign: 192.0.2.50\n") {
		t.Errorf("log file %s:\n%s", passtLog, log)
	}
	qlog, _ := os.ReadFile(filepath.Join("/var/log/libvirt/qemu", name+".log"))
	cmdline := ""
	for _, l := range strings.Split(string(qlog), "\n") {
		if strings.Contains(l, "passt") && strings.Contains(l, "--socket") {
			cmdline = l
		}
	}
	t.Logf("libvirt ran: %s", cmdline)
	sock := argAfter(cmdline, "--socket")
	pidFile := argAfter(cmdline, "--pid")
	if sock == "" {
		t.Fatalf("no passt command line in the libvirt log:\n%s", qlog)
	}

	if vhost && !strings.Contains(cmdline, "--vhost-user") {
		t.Errorf("libvirt did not ask for vhost-user: %s", cmdline)
	}
	pid := readPid(t, pidFile)
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe != filepath.Join(shim, "passt") {
		t.Fatalf("libvirt's passt is %q, not gopasst", exe)
	}
	libvirtCrash(t, pid, pidFile, console)

	virsh(t, "destroy", name)
	pid = readPidMaybe(pidFile)
	waitLong(t, "gopasst to go away", 15*time.Second, func() bool {
		_, errSock := os.Stat(sock)
		_, errPid := os.Stat(pidFile)
		return os.IsNotExist(errSock) && os.IsNotExist(errPid) && (pid == 0 || syscall.Kill(pid, 0) != nil)
	})
}

// exampleLogFile is a log file for domain name in the directory that
// contrib/libvirt/domain-example.xml's logFile names, removed when the
// test ends.
func exampleLogFile(t *testing.T, name string) string {
	m := regexp.MustCompile(`logFile='([^']+)'`).FindStringSubmatch(readFile("../contrib/libvirt/domain-example.xml"))
	if m == nil {
		t.Fatal("contrib/libvirt/domain-example.xml has no logFile")
	}
	p := filepath.Join(filepath.Dir(m[1]), name+".log")
	if _, err := os.Lstat(p); err == nil {
		t.Fatalf("%s exists already", p)
	}
	t.Cleanup(func() { os.Remove(p) })
	return p
}

// libvirtLogInVarLog: with logFile in /var/log, as the example had it,
// libvirt's passt (run as the QEMU user) cannot create the log, and the
// domain does not start: contrib/libvirt/README.md says why.
func libvirtLogInVarLog(t *testing.T, xml, xmlPath string) {
	bad := regexp.MustCompile(`logFile='([^']+)'`).FindStringSubmatch(xml)[1]
	os.WriteFile(xmlPath, []byte(xml), 0o644)
	out, err := exec.Command("virsh", "create", xmlPath).CombinedOutput()
	if _, statErr := os.Lstat(bad); statErr == nil {
		os.Remove(bad)
		t.Errorf("%s was created", bad)
	}
	if err == nil || !strings.Contains(string(out), "--log-file") {
		t.Errorf("virsh create with logFile %s: %v\n%s", bad, err, out)
	}
}

// libvirtCrash kills libvirt's passt (gopasst) as a crash would: libvirt
// runs the same command again on the stale socket, QEMU reconnects, and
// the guest reaches the host again.
func libvirtCrash(t *testing.T, pid int, pidFile, console string) {
	syscall.Kill(pid, syscall.SIGKILL)
	before := strings.Count(readFile(console), "GOPASST-HOST host-")
	waitLong(t, "connectivity after kill -9", 2*time.Minute, func() bool {
		data := readFile(console)
		return strings.Count(data, "GOPASST-HOST host-") > before+1 &&
			regexp.MustCompile(`GOPASST-HOST host-\d+\s*$`).MatchString(strings.TrimSpace(data))
	})

	if again := readPidMaybe(pidFile); again == pid || again <= 0 || syscall.Kill(again, 0) != nil {
		t.Fatalf("after kill -9 of %d, the PID file names %d", pid, again)
	}
}

// stopLibvirtd stops libvirtd and virtlogd and waits until they are gone:
// one still exiting holds its PID file, and the next one fails to start
// ("Unable to obtain pidfile"). libvirtd may take its own shutdown
// timeout, 30 s, to exit (it once took longer than that in CI), so
// whatever is left after stopTimeout is killed.
func stopLibvirtd(t *testing.T) {
	daemons := []string{"libvirtd", "virtlogd"}
	gone := func() bool { return !slices.ContainsFunc(daemons, running) }
	for _, d := range daemons {
		exec.Command("pkill", "-x", d).Run()
	}
	if pollUntil(stopTimeout, gone) {
		return
	}
	for _, d := range daemons {
		exec.Command("pkill", "-KILL", "-x", d).Run()
	}
	waitLong(t, "libvirtd and virtlogd to exit", stopTimeout, gone)
}

const stopTimeout = 10 * time.Second

// running tells whether a live process (not a zombie, which holds no
// file) has the command name comm.
func running(comm string) bool {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, _ := os.ReadFile(p)
		// pid (comm) state ...
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open >= 0 && end+2 < len(b) && string(b[open+1:end]) == comm && b[end+2] != 'Z' {
			return true
		}
	}
	return false
}

func startLibvirtd(t *testing.T, shim string) {
	stopLibvirtd(t)
	if out, err := exec.Command("virtlogd", "-d").CombinedOutput(); err != nil {
		t.Fatalf("virtlogd: %v\n%s", err, out)
	}
	cmd := exec.Command("libvirtd", "-d")
	cmd.Env = append(os.Environ(), "PATH="+shim+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("libvirtd: %v\n%s", err, out)
	}
	t.Cleanup(func() { stopLibvirtd(t) })
	waitLong(t, "libvirtd", 30*time.Second, func() bool { return exec.Command("virsh", "version").Run() == nil })
}

func virsh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("virsh", args...).CombinedOutput(); err != nil {
		t.Fatalf("virsh %v: %v\n%s", args, err, out)
	}
}

// defaultGateway is the root namespace's IPv4 default gateway, which
// gopasst gives the guest and maps to the host's loopback.
func defaultGateway(t *testing.T) string {
	out := mustRun(t, "ip", "-4", "route", "show", "default")
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "via" && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Skip("no IPv4 default route: libvirt's passt needs a template interface")
	return ""
}

func hostRead(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	return strings.TrimSpace(string(b)), err
}

func argAfter(cmdline, opt string) string {
	f := strings.Fields(cmdline)
	for i := range f {
		if f[i] == opt && i+1 < len(f) {
			return strings.Trim(f[i+1], "'\"")
		}
	}
	return ""
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func readPidMaybe(p string) int {
	var pid int
	fmt.Sscan(readFile(p), &pid)
	return pid
}

func readPid(t *testing.T, p string) int {
	pid := readPidMaybe(p)
	if pid <= 0 {
		t.Fatalf("no PID in %s", p)
	}
	return pid
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, mode); err != nil {
		t.Fatal(err)
	}
}
