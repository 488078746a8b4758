package tests

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hostileBin is gopasst built with -tags hostileengine: its engine plays
// a compromised one (cmd/gopasst/hostile_engine.go). The release build
// never has it.
func hostileBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(suiteDir, "gopasst-hostile")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	build := exec.Command("go", "build", "-tags", "hostileengine", "-o", bin, "../cmd/gopasst")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if os.Getenv("GOPASST_CGO") == "1" { // as TestMain builds gopasstBin
		build.Env = append(build.Env, "CGO_ENABLED=1")
	}
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -tags hostileengine: %v\n%s", err, out)
	}
	return bin
}

// hostileRun is one gopasst with a hostile engine, run in the foreground.
type hostileRun struct {
	dir, log string
	helper   int // the helper's PID
	engine   int
	cmd      *exec.Cmd
}

// startHostile starts the hostile gopasst with forwards to attack: a TCP
// forward, a unix forward and two commands that print how they run. pre
// goes before gopasst's arguments (a user to run as); extra after.
func startHostile(t *testing.T, pre []string, extra ...string) *hostileRun {
	bin := hostileBin(t)
	h := &hostileRun{dir: sharedDir(t)}
	h.log = filepath.Join(h.dir, "log")
	args := append(pre, bin, "-f", "-s", filepath.Join(h.dir, "s"), "-P", filepath.Join(h.dir, "pid"),
		"--log-file", h.log, "--control", filepath.Join(h.dir, "ctl"),
		"--unix-fwd", "6000:"+filepath.Join(h.dir, "agent"),
		"--cmd-fwd", "7000:cat /proc/self/status", "--cmd-fwd", "7001:cat /proc/self/limits")
	args = append(append(args, extra...), hostArgs...)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h.cmd = cmd
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	h.waitLog(t, "hostile: round 1 done")
	data, _ := os.ReadFile(filepath.Join(h.dir, "pid"))
	h.engine, _ = strconv.Atoi(strings.TrimSpace(string(data)))
	// Through setpriv, the helper is setpriv's process: it execs.
	h.helper = cmd.Process.Pid
	return h
}

func (h *hostileRun) waitLog(t *testing.T, line string) {
	t.Helper()
	waitFor(t, line, func() bool { b, _ := os.ReadFile(h.log); return strings.Contains(string(b), line) })
}

// lines are the hostile engine's log lines that contain s, without their
// time stamps.
func (h *hostileRun) lines(t *testing.T, s string) []string {
	t.Helper()
	b, err := os.ReadFile(h.log)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if i := strings.Index(l, "hostile: "); i >= 0 && strings.Contains(l, s) {
			out = append(out, l[i:])
		}
	}
	return out
}

// run ends the rounds: the helper must hold as many descriptors after
// the second as after the first (no leak per request), and every
// request must have been refused.
func (h *hostileRun) run(t *testing.T) {
	t.Helper()
	n1 := countFds(t, h.helper)
	syscall.Kill(h.engine, syscall.SIGUSR1)
	h.waitLog(t, "hostile: round 2 done")
	if n2 := countFds(t, h.helper); n2 != n1 {
		t.Errorf("the helper held %d descriptors after round 1, %d after round 2", n1, n2)
	}
	syscall.Kill(h.engine, syscall.SIGUSR1)
	h.waitLog(t, "hostile: done")
	if served := h.lines(t, "SERVED"); len(served) > 0 {
		t.Errorf("the helper served a compromised engine:\n%s", strings.Join(served, "\n"))
	}
	// Before ready: not dumpable, 5 binds, 2 dials; each round: 7 raw
	// requests, 5 binds, a dial, 201 requests with descriptors.
	if refused := h.lines(t, ": refused: "); len(refused) != 8+2*(7+5+1+201) {
		t.Errorf("%d requests refused, want %d:\n%s", len(refused), 8+2*(7+5+1+201), strings.Join(refused, "\n"))
	}
	for _, want := range []string{
		"hostile: dial before ready: refused: no unix socket or command before the engine is ready",
		"hostile: bind tcp 80: refused: tcp port 80 is not a configured forward",
		"hostile: cmd argv: refused: unknown request",
		"hostile: 253 descriptors: refused: request refused",
	} {
		if len(h.lines(t, want)) == 0 {
			t.Errorf("no %q in the log", want)
		}
	}
	if _, err := os.Stat("/tmp/gopasst-hostile-pwned"); err == nil {
		os.Remove("/tmp/gopasst-hostile-pwned")
		t.Error("the helper ran the engine's argv")
	}
}

// stop sends gopasst SIGTERM, which the hostile engine, done, ignores:
// the helper must still end it, and exit.
func (h *hostileRun) stop(t *testing.T) {
	t.Helper()
	h.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan struct{})
	go func() { h.cmd.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(time.Minute): // a safety net: the helper waits for its engine for ever
		h.cmd.Process.Kill()
		syscall.Kill(h.engine, syscall.SIGKILL)
		<-exited
		t.Fatal("gopasst did not exit on SIGTERM with its engine deaf to it")
	}
	if err := syscall.Kill(h.engine, 0); err != syscall.ESRCH {
		syscall.Kill(h.engine, syscall.SIGKILL)
		t.Errorf("the engine is still there after gopasst exited: %v", err)
	}
}

// status is what a command printed of /proc/self/status, as a map.
func (h *hostileRun) status(t *testing.T) map[string]string {
	m := map[string]string{}
	for _, l := range h.lines(t, "hostile: command 7000: ") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(l, "hostile: command 7000: "), ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	if len(m) == 0 {
		t.Fatalf("no status from the command: %v", h.lines(t, "hostile: command"))
	}
	return m
}

// checkCommandConfined: a command runs with nothing to gain: no
// capability in any set, no_new_privs, a session of its own, no core
// dumps and 1024 descriptors.
func (h *hostileRun) checkCommandConfined(t *testing.T, bnd string) {
	t.Helper()
	st := h.status(t)
	zero := "0000000000000000"
	for k, v := range map[string]string{"CapInh": zero, "CapPrm": zero, "CapEff": zero, "CapAmb": zero,
		"CapBnd": bnd, "NoNewPrivs": "1", "Uid": "65534\t65534\t65534\t65534", "NSsid": st["Pid"]} {
		if st[k] != v {
			t.Errorf("the command's %s: %q, want %q", k, st[k], v)
		}
	}
	limits := strings.Join(h.lines(t, "hostile: command 7001: "), "\n")
	for _, re := range []string{"Max core file size", "Max open files"} {
		var line string
		for _, l := range strings.Split(limits, "\n") {
			if strings.Contains(l, re) {
				line = strings.Join(strings.Fields(l), " ")
			}
		}
		want := map[string]string{"Max core file size": "0 0 bytes", "Max open files": "1024 1024 files"}[re]
		if !strings.Contains(line, want) {
			t.Errorf("the command's limits: %q, want %q", line, want)
		}
	}
}

// servingThread finds the helper's thread that serves the engine: the
// one with no_new_privs.
func servingThread(t *testing.T, helper int) map[string]string {
	t.Helper()
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", helper))
	var found []map[string]string
	for _, task := range tasks {
		st := procStatus(t, fmt.Sprintf("%d/task/%s", helper, task.Name()))
		if st["NoNewPrivs"] == "1" {
			found = append(found, st)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d of the helper's %d threads have no_new_privs, want 1", len(found), len(tasks))
	}
	return found[0]
}

// TestHostileEngine runs a real helper for a compromised engine (issue
// 22): the engine asks for argv, paths, forwards nobody configured,
// unix sockets and commands before ready, a second ready, and sends
// requests with 2 and 253 descriptors. Every request is refused, the
// helper leaks no descriptor, and the commands the command line
// configured run confined. A control-socket "add" of a privileged port
// after ready fails: the serving thread is nobody, with no capability.
// An engine deaf to SIGTERM (one held in a system call) is killed: gopasst
// exits, and leaves no engine behind.
func TestHostileEngine(t *testing.T) {
	needRoot(t)
	needReachable(t)
	h := startHostile(t, nil)
	h.run(t)
	h.checkCommandConfined(t, "0000000000000000")
	st := servingThread(t, h.helper)
	if st["Uid"] != "65534\t65534\t65534\t65534" || st["CapEff"] != "0000000000000000" || st["CapBnd"] != "0000000000000000" {
		t.Errorf("the serving thread: Uid %q, CapEff %q, CapBnd %q", st["Uid"], st["CapEff"], st["CapBnd"])
	}
	out, err := exec.Command(gopasstBin, "ctl", filepath.Join(h.dir, "ctl"), "add", "-t", "127.0.0.1/"+privPort(t)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "permission denied") {
		t.Errorf("ctl add of a privileged port after ready: %v: %s", err, out)
	}
	h.stop(t)
}

// TestHostileEngineAmbient: started as a user with the ambient capability
// CAP_NET_BIND_SERVICE, gopasst binds the command line's privileged port
// before ready; after it, the serving thread and the commands it starts
// have no capability left (issue 22 item 8).
func TestHostileEngineAmbient(t *testing.T) {
	needRoot(t)
	needReachable(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs util-linux's setpriv")
	}
	port := privPort(t)
	h := startHostile(t, []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"}, "-t", "127.0.0.1/"+port)
	h.run(t)
	h.checkCommandConfined(t, procStatus(t, strconv.Itoa(h.helper))["CapBnd"])
	st := servingThread(t, h.helper)
	for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapAmb"} {
		if st[k] != "0000000000000000" {
			t.Errorf("the serving thread's %s: %s", k, st[k])
		}
	}
	kept := false
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", h.helper))
	for _, task := range tasks {
		kept = kept || procStatus(t, fmt.Sprintf("%d/task/%s", h.helper, task.Name()))["CapAmb"] != "0000000000000000"
	}
	if !kept {
		t.Error("no thread of the helper has the ambient capability: the test proves nothing")
	}
	out, err := exec.Command(gopasstBin, "ctl", filepath.Join(h.dir, "ctl"), "add", "-t", "127.0.0.1/"+privPort(t)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "permission denied") {
		t.Errorf("ctl add of a privileged port after ready: %v: %s", err, out)
	}
}

// privPort is a privileged TCP port free on 127.0.0.1.
func privPort(t *testing.T) string {
	t.Helper()
	for p := 1000; p > 900; p-- {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			l.Close()
			return strconv.Itoa(p)
		}
	}
	t.Skip("no free privileged port on 127.0.0.1")
	return ""
}
