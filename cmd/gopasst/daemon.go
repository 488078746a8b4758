package main

import (
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// Daemonizing re-executes gopasst instead of forking: a Go process cannot
// fork safely once its runtime has started threads. The parent passes the
// listening socket and a readiness pipe to the child, and exits only when
// the child reports it is serving (or why it is not).

const (
	envDaemon = "GOPASST_DAEMON_SOCKET" // set in the child: the socket path, or "-"
	childLfd  = 3                       // first ExtraFiles descriptor
	childPipe = 4
)

func daemonize(o *Options, lfd int, path string, stderr io.Writer) int {
	self, err := os.Executable()
	if err != nil {
		os.Remove(path)
		return fail(stderr, "cannot find own executable: %v", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		os.Remove(path)
		return fail(stderr, "pipe: %v", err)
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		os.Remove(path)
		return fail(stderr, "%v", err)
	}
	cmd := exec.Command(self, os.Args[1:]...)
	marker := path
	if marker == "" {
		marker = "-" // --vsock or --fd: no socket file
	}
	cmd.Env = append(os.Environ(), envDaemon+"="+marker)
	// The daemon must not hold our stdout and stderr: libvirt reads them
	// until EOF before it looks at the PID file.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	cmd.ExtraFiles = []*os.File{os.NewFile(uintptr(lfd), "listen"), w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		os.Remove(path)
		return fail(stderr, "starting daemon: %v", err)
	}
	w.Close()
	msg, _ := io.ReadAll(r)
	if len(msg) > 0 {
		os.Remove(path)
		return fail(stderr, "%s", strings.TrimSpace(string(msg)))
	}
	cmd.Process.Release()
	return 0
}

// daemonChild runs in the re-executed process: it supervises the engine,
// and tells the parent it is ready by closing the pipe.
func daemonChild(o *Options, path string) int {
	ready := os.NewFile(childPipe, "ready")
	syscall.CloseOnExec(childPipe) // the engine must not hold the parent's pipe
	fd := childLfd
	switch {
	case o.Vsock != "":
		fd, path = -1, "" // the engine listens itself
	case o.Fd >= 0:
		path = ""
	}
	if fd >= 0 {
		syscall.CloseOnExec(fd)
	}
	return supervise(&o.NetOptions, o.engineRun(fd, path, false), ready, func() { ready.Close() })
}
