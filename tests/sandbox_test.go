package tests

import (
	"debug/elf"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSandbox checks, from /proc, what gopasst's engine gave up once it
// serves: root (for nobody, or --runas), every capability, the host's
// file system and its user, mount, IPC and UTS namespaces. It keeps the
// network namespace it was started in, and runs under seccomp with
// no_new_privs. The rest of the suite runs against the same sandbox.
func TestSandbox(t *testing.T) {
	// Position-independent, as make build makes it: ASLR moves its code.
	if f, err := elf.Open(gopasstBin); err != nil || f.Type != elf.ET_DYN {
		t.Errorf("%s is not a PIE (%v)", gopasstBin, err)
	} else {
		f.Close()
	}
	t.Run("nobody", func(t *testing.T) {
		// A guest on the sandboxed engine, as in every other test.
		dir := sharedDir(t)
		pid := filepath.Join(dir, "pid")
		w := newWorld(t, WorldOpts{Args: []string{"-P", pid, "--log-file", filepath.Join(dir, "log")}})
		if w.Lease["ip"] == "" {
			t.Error("no DHCP lease from the sandboxed engine")
		}
		data, _ := os.ReadFile(pid)
		checkSandboxed(t, strings.TrimSpace(string(data)), strconv.Itoa(w.Proc.Process.Pid), "65534")
	})
	t.Run("runas", func(t *testing.T) {
		needRoot(t)
		dir := sharedDir(t)
		sock, pidFile := filepath.Join(dir, "s"), filepath.Join(dir, "pid")
		out, err := exec.Command(gopasstBin, append([]string{"-s", sock, "-P", pidFile, "--runas", "1:1"}, hostArgs...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		data, _ := os.ReadFile(pidFile)
		pid := strings.TrimSpace(string(data))
		checkSandboxed(t, pid, "self", "1")
		p, _ := strconv.Atoi(pid)
		syscall.Kill(p, syscall.SIGTERM)
		waitFor(t, "daemon to exit", func() bool { return syscall.Kill(p, 0) != nil })
		expectRemoved(t, sock, pidFile)
	})
}

// TestSandboxProbes has the test build's engine try, once it serves,
// what its sandbox must refuse (cmd/gopasst/sandbox_probe.go), each in an
// engine of its own: a refusal may kill it.
func TestSandboxProbes(t *testing.T) {
	needRoot(t)
	// Another process of the engine's user, which only the sandbox keeps
	// the engine from signalling or limiting (another gopasst's engine).
	other := exec.Command("sleep", "600")
	other.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer other.Wait()
	defer other.Process.Kill()
	// What only an attacker asks kills the engine; the rest is refused.
	const killed, refused = "killed by SIGSYS", "operation not permitted"
	for _, c := range []struct{ probe, want string }{
		// A new user namespace, whose kernel attack surface (raw
		// sockets, x_tables) an engine has no use for.
		{"clone-ns", killed},
		{"execve", killed},
		{"socket-netlink", killed},
		// Another process, which the engine can neither signal nor limit.
		{"tgkill", killed},
		{"prlimit", killed},
		// Executable memory, which nothing but an exploit needs.
		{"mmap-exec", killed},
		{"mprotect-exec", killed},
		// A terminal request, which could queue input for a shell.
		{"tiocsti", refused},
		// What a library may try on a rare path: unix sockets
		// (log/syslog's redial), files (the time zone).
		{"socket-unix", refused},
		{"openat", refused},
	} {
		t.Run(c.probe, func(t *testing.T) {
			if got := probeEngine(t, c.probe, other.Process.Pid); got != c.want {
				t.Errorf("%s: %s, want %s", c.probe, got, c.want)
			}
		})
	}
}

// TestSandboxTerminal starts gopasst -f from a terminal, as at a shell:
// the engine has neither that terminal as its controlling one nor on its
// standard streams, where TIOCSTI could queue input for the shell.
func TestSandboxTerminal(t *testing.T) {
	needRoot(t)
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skip(err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	ptsName := "/dev/pts/" + strconv.Itoa(n)
	pts, err := os.OpenFile(ptsName, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()
	go io.Copy(io.Discard, ptmx)
	cmd := exec.Command(gopasstBin, append([]string{"-f", "-s", filepath.Join(sharedDir(t), "s")}, hostArgs...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Signal(syscall.SIGTERM)
	var engine string
	waitFor(t, "the engine", func() bool {
		kids := childPids(cmd.Process.Pid)
		if len(kids) != 1 {
			return false
		}
		engine = strconv.Itoa(kids[0])
		return procStatus(t, engine)["Seccomp"] == "2"
	})
	helperStat, engineStat := procStat(t, strconv.Itoa(cmd.Process.Pid)), procStat(t, engine)
	if helperStat[4] == "0" {
		t.Fatal("the helper has no controlling terminal")
	}
	if engineStat[4] != "0" || engineStat[3] == helperStat[3] {
		t.Errorf("the engine's session %s and terminal %s; the helper's %s and %s", engineStat[3], engineStat[4], helperStat[3], helperStat[4])
	}
	for fd := range 3 {
		if l, _ := os.Readlink("/proc/" + engine + "/fd/" + strconv.Itoa(fd)); l == ptsName {
			t.Errorf("the engine's descriptor %d is the terminal", fd)
		}
	}
}

// procStat is /proc/PID/stat after the command's name: state, ppid,
// pgrp, session, tty_nr, ...
func procStat(t *testing.T, pid string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	return strings.Fields(s[strings.LastIndex(s, ")")+2:])
}

// probeEngine runs gopasst in the foreground with the engine's probe,
// aimed at the process other, and returns what the probe logged, or how
// the engine died.
func probeEngine(t *testing.T, probe string, other int) string {
	t.Helper()
	dir := sharedDir(t)
	cmd := exec.Command(gopasstBin, append([]string{"-f", "-s", filepath.Join(dir, "s")}, hostArgs...)...)
	cmd.Env = append(os.Environ(), "GOPASST_PROBE="+probe, "GOPASST_PROBE_PID="+strconv.Itoa(other))
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 128+int(syscall.SIGSYS) {
		return "killed by SIGSYS"
	} else if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if _, res, ok := strings.Cut(line, "probe "+probe+": "); ok {
			return res
		}
	}
	t.Fatalf("no probe result:\n%s", out)
	return ""
}

// checkSandboxed checks the engine pid against the process ref, which is
// in the network namespace the engine was started from.
func checkSandboxed(t *testing.T, pid, ref, uid string) {
	t.Helper()
	status := procStatus(t, pid)
	for _, k := range []string{"Uid", "Gid"} {
		for _, id := range strings.Fields(status[k]) {
			if id != uid {
				t.Errorf("%s: %q, want %s everywhere", k, status[k], uid)
				break
			}
		}
	}
	// Capabilities, no_new_privs and seccomp belong to each thread.
	zero := "0000000000000000"
	want := map[string]string{"Groups": "", "Seccomp": "2", "NoNewPrivs": "1",
		"CapInh": zero, "CapPrm": zero, "CapEff": zero, "CapBnd": zero, "CapAmb": zero}
	tids, _ := os.ReadDir("/proc/" + pid + "/task")
	for _, tid := range tids {
		status := procStatus(t, pid+"/task/"+tid.Name())
		for k, v := range want {
			if status[k] != v {
				t.Errorf("thread %s: %s: %q, want %q", tid.Name(), k, status[k], v)
			}
		}
	}
	for _, ns := range []string{"user", "mnt", "ipc", "uts", "pid", "net"} {
		ours, _ := os.Readlink("/proc/" + ref + "/ns/" + ns)
		its, err := os.Readlink("/proc/" + pid + "/ns/" + ns)
		if err != nil {
			t.Fatal(err)
		}
		if (ns == "net") != (ours == its) {
			t.Errorf("%s namespace: the engine's %s, its starter's %s", ns, its, ours)
		}
	}
	// Nor can one be made inside its user namespace.
	if out, err := exec.Command("nsenter", "-t", pid, "-U", "cat", "/proc/sys/user/max_user_namespaces").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "0" {
		t.Errorf("max_user_namespaces in the engine's user namespace: %s (%v), want 0", out, err)
	}
	if ents, err := os.ReadDir("/proc/" + pid + "/root/"); err != nil || len(ents) != 0 {
		t.Errorf("the engine's root holds %d entries (%v), want none", len(ents), err)
	}
	// Its descriptors: sockets, eventfds, epoll, the log file, /dev/null
	// for stdio, its own /proc/PID/fd (to count descriptors) and the
	// cgroup files the Go runtime keeps open. Those last two are on
	// mounts of the host's tree that the sandbox detached: the kernel
	// names them from that tree's root or from their own.
	fds, _ := os.ReadDir("/proc/" + pid + "/fd")
	for _, fd := range fds {
		l, _ := os.Readlink("/proc/" + pid + "/fd/" + fd.Name())
		own := strings.TrimPrefix(l, "/proc") == "/"+pid+"/fd"
		if strings.HasPrefix(l, "/") && l != "/dev/null" && !strings.HasSuffix(l, "/log") && !own && !strings.Contains(l, "/cpu") {
			t.Errorf("the engine holds %s on descriptor %s", l, fd.Name())
		}
	}
}

// procStatus reads /proc/PID/status as a map, empty if PID has gone.
func procStatus(t *testing.T, pid string) map[string]string {
	t.Helper()
	data, err := os.ReadFile("/proc/" + pid + "/status")
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return map[string]string{} // gone: a process or thread met in passing
	}
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// TestFileCapabilities: a copy of gopasst given cap_net_admin, as
// docs/vhost-user.md has for gopasst repair, runs for another user only
// as repair. As the pasta agent, whose plan comes from the environment,
// nobody made an interface with an address in a network namespace it
// has no rights in and was handed its tap; in every other mode gopasst
// served with the capability.
func TestFileCapabilities(t *testing.T) {
	needRoot(t)
	needReachable(t)
	for _, tool := range []string{"setcap", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	dir := sharedDir(t)
	bin := filepath.Join(dir, "gopasst")
	copyFile(t, gopasstBin, bin, 0o755)
	mustRun(t, "setcap", "cap_net_admin+ep", bin)
	ns := newNetns(t, "fcaps")
	// start runs bin as nobody in ns and says what it printed, once it
	// exits, or "" if it still runs after 2 s or made the interface.
	start := func(env string, args ...string) string {
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(sp[0]) // the agent hands the tap over here
		cmd := ns.Cmd(asNobody[0], append(append(asNobody[1:], "env", env, bin), args...)...)
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		cmd.ExtraFiles = []*os.File{os.NewFile(uintptr(sp[1]), "agent")}
		err = cmd.Start()
		cmd.ExtraFiles[0].Close()
		if err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		defer func() { cmd.Process.Kill(); <-exited }()
		for range 40 {
			select {
			case <-exited:
				return out.String()
			case <-time.After(50 * time.Millisecond):
			}
			if strings.Contains(ns.Run(t, "ip", "link", "show"), "fcaps0") {
				t.Errorf("%s %v as nobody made fcaps0", env, args)
				return ""
			}
		}
		t.Errorf("%s %v as nobody still runs: %s", env, args, out)
		return ""
	}
	plan := `GOPASST_PASTA_AGENT={"Ifname":"fcaps0","Config":true,"Addrs":[{"Prefix":"10.9.9.1/24"}]}`
	for _, c := range []struct {
		env  string
		args []string
	}{{plan, nil}, {"X=", []string{"-f", "-s", filepath.Join(dir, "sock")}}} {
		if out := start(c.env, c.args...); out != "" && !strings.Contains(out, "privileges its caller lacks") {
			t.Errorf("%s %v: %s", c.env, c.args, out)
		}
	}
	if out := start(plan, "repair", filepath.Join(dir, "none")); !strings.Contains(out, "repair: stat") {
		t.Errorf("repair did not run: %s", out)
	}
}
