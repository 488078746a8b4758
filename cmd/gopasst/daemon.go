package main

import (
	"fmt"
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
	if err := writePidFile(o.PidFile, cmd.Process.Pid); err != nil {
		cmd.Process.Kill()
		os.Remove(path)
		return fail(stderr, "%v", err)
	}
	cmd.Process.Release()
	return 0
}

// daemonChild runs in the re-executed process: it opens the log, tells the
// parent it is ready by closing the pipe, and serves.
func daemonChild(o *Options, cfg netSetup, path string) int {
	ready := os.NewFile(childPipe, "ready")
	logger, closeLog, err := openLog(&o.NetOptions, false, os.Stderr)
	if err != nil {
		fmt.Fprintf(ready, "%v\n", err)
		return 1
	}
	defer closeLog()
	lfd, conn := childLfd, -1
	switch {
	case o.Vsock != "":
		lfd, path = -1, "" // the daemon listens itself (startListenless)
	case o.Fd >= 0:
		lfd, conn, path = -1, childLfd, ""
	}
	if lfd >= 0 || conn >= 0 {
		syscall.CloseOnExec(childLfd)
	}
	return serve(o, cfg, lfd, conn, path, logger, ready, func() { ready.Close() })
}
