// Package tests holds gopasst's end-to-end tests. They run gopasst in a
// network namespace of their own (the "host") and bridge its socket to a
// tap device in a second namespace (the "guest"), so the guest is the
// kernel's real TCP/IP stack. They need root (CAP_SYS_ADMIN and
// CAP_NET_ADMIN) and skip cleanly without it.
package tests

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// needRoot skips a test that needs namespaces and tap devices.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and tap devices")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun")
	}
}

// Netns is a network namespace created for one test: a named one, or
// one known by its file (Path, such as /proc/PID/ns/net).
type Netns struct {
	Name string
	Path string
}

// file is the namespace's file, to join it.
func (ns *Netns) file() string {
	if ns.Path != "" {
		return ns.Path
	}
	return filepath.Join("/run/netns", ns.Name)
}

// newNetns creates a namespace with loopback up and removes it, with its
// /etc/netns files, when the test ends. Its name carries the test
// binary's PID, for sweepLeftovers.
func newNetns(t testing.TB, prefix string) *Netns {
	t.Helper()
	var r [4]byte
	rand.Read(r[:])
	ns := &Netns{Name: fmt.Sprintf("%s-%d-%s", prefix, os.Getpid(), hex.EncodeToString(r[:]))}
	mustRun(t, "ip", "netns", "add", ns.Name)
	t.Cleanup(func() { delNetns(ns.Name) })
	ns.Run(t, "ip", "link", "set", "lo", "up")
	return ns
}

// delNetns ends the processes in a named namespace and deletes it, with
// its /etc/netns files.
func delNetns(name string) {
	killNetns(name)
	exec.Command("ip", "netns", "del", name).Run()
	os.RemoveAll(filepath.Join("/etc/netns", name))
}

// leftBy matches what a test binary names by its PID: namespaces
// (newNetns) and the suite's directory (TestMain).
var leftBy = regexp.MustCompile(`^(?:gp[gh]|gopasst-test)-([0-9]+)-`)

// sweepLeftovers deletes what an earlier test binary that is gone (a
// panic, a timeout, a kill) named by its PID and could not clean up: the
// machine is left as it was found even after a failed run.
func sweepLeftovers() {
	gone := func(name string) bool {
		m := leftBy.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		pid, _ := strconv.Atoi(m[1])
		return pid != os.Getpid() && unix.Kill(pid, 0) == unix.ESRCH
	}
	if os.Geteuid() == 0 {
		out, _ := exec.Command("ip", "netns", "list").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) > 0 && gone(f[0]) {
				fmt.Fprintf(os.Stderr, "deleting namespace %s, left by a test binary that is gone\n", f[0])
				delNetns(f[0])
			}
		}
	}
	dirs, _ := os.ReadDir(os.TempDir())
	for _, d := range dirs {
		if gone(d.Name()) {
			os.RemoveAll(filepath.Join(os.TempDir(), d.Name()))
		}
	}
}

// killNetns ends processes left in a namespace, so it can be deleted.
func killNetns(name string) {
	out, _ := exec.Command("ip", "netns", "pids", name).Output()
	for _, p := range strings.Fields(string(out)) {
		exec.Command("kill", "-9", p).Run()
	}
}

// Cmd prepares a command to run inside the namespace.
func (ns *Netns) Cmd(name string, args ...string) *exec.Cmd {
	if ns.Path != "" {
		return exec.Command("nsenter", append([]string{"--net=" + ns.Path, name}, args...)...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Run runs a command in the namespace and fails the test if it fails.
func (ns *Netns) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := ns.Cmd(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), ns.Name, err, out)
	}
	return string(out)
}

// Do calls fn on an OS thread switched into the namespace. Sockets created
// by fn stay in the namespace after it returns, so the test process can
// be a server on the host side and a client on the guest side at once.
func (ns *Netns) Do(t testing.TB, fn func()) {
	t.Helper()
	if err := ns.do(fn); err != nil {
		t.Fatal(err)
	}
}

func (ns *Netns) do(fn func()) error {
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open(ns.file())
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", ns.Name, err)
	}
	fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime discards it at exit.
		return fmt.Errorf("setns back: %w", err)
	}
	runtime.UnlockOSThread()
	return nil
}

// Sysctl sets a sysctl inside the namespace.
func (ns *Netns) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	ns.Run(t, "sysctl", "-q", "-w", key+"="+value)
}

// WriteEtc writes a file that "ip netns exec" bind-mounts over /etc/NAME
// for processes in this namespace (used for resolv.conf).
func (ns *Netns) WriteEtc(t testing.TB, name, content string) {
	t.Helper()
	dir := filepath.Join("/etc/netns", ns.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
