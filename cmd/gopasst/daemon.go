package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Daemonizing re-executes gopasst instead of forking: a Go process cannot
// fork safely once its runtime has started threads. The parent passes the
// listening socket and a readiness pipe to the child, and exits only when
// the child reports it is serving (or why it is not).

const (
	envDaemon    = "GOPASST_DAEMON_SOCKET" // set in the child: the socket as ownedFile.String, or "-"
	envDaemonDir = "GOPASST_DAEMON_DIR"    // set in the child: the caller's directory
	childLfd     = 3                       // first ExtraFiles descriptor
	childPipe    = 4
)

func daemonize(o *Options, lfd int, sock ownedFile, stderr io.Writer) int {
	marker := sock.String()
	if sock.path == "" {
		marker = "-" // --vsock or --fd: no socket file
	}
	dir, err := os.Getwd()
	if err != nil {
		sock.remove()
		return fail(stderr, "%v", err)
	}
	msg, err := spawnDaemon([]string{envDaemon + "=" + marker, envDaemonDir + "=" + dir},
		[]*os.File{os.NewFile(uintptr(lfd), "listen")})
	if err != nil || msg != "" {
		// The daemon removed what it made; the socket is ours or its.
		sock.remove()
	}
	switch {
	case err != nil:
		return fail(stderr, "%v", err)
	case msg != "":
		fmt.Fprintln(stderr, msg) // the daemon's own words, already "gopasst: ..."
		return 1
	}
	return 0
}

// spawnDaemon re-executes gopasst in the background, with env added and
// files from descriptor 3 on, then the readiness pipe, and waits: it
// returns "" once the daemon is ready, else the daemon's reason. The
// daemon must not hold our stdout and stderr: libvirt, podman and
// rootlesskit read them to their end before they go on.
func spawnDaemon(env []string, files []*os.File) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("cannot find own executable: %v", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return "", fmt.Errorf("pipe: %v", err)
	}
	defer r.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		w.Close()
		return "", err
	}
	defer devnull.Close()
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Args[0] = os.Args[0] // pasta is told apart by its name
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	cmd.ExtraFiles = append(files, w)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	err = cmd.Start()
	w.Close()
	if err != nil {
		return "", fmt.Errorf("starting daemon: %v", err)
	}
	msg, _ := io.ReadAll(r)
	cmd.Process.Release()
	return strings.TrimSpace(string(msg)), nil
}

// daemonChild runs in the re-executed process: it supervises the engine,
// and tells the parent it is ready by closing the pipe.
func daemonChild(o *Options, marker string) int {
	ready := os.NewFile(childPipe, "ready")
	syscall.CloseOnExec(childPipe) // the engine must not hold the parent's pipe
	sock := parseOwnedFile(marker)
	dir := os.Getenv(envDaemonDir)
	o.inDir(dir)
	sock.path = inDir(dir, sock.path)
	fd := childLfd
	switch {
	case o.Vsock != "":
		fd, sock = -1, ownedFile{} // the engine listens itself
	case o.Fd >= 0:
		sock = ownedFile{}
	}
	if fd >= 0 {
		syscall.CloseOnExec(fd)
	}
	return supervise(&o.NetOptions, o.engineRun(fd, sock, false), ready, func() { ready.Close() })
}

// inDir makes the daemon's relative paths name what they named for its
// caller, whose directory is dir: the daemon runs in "/".
func (o *Options) inDir(dir string) {
	o.NetOptions.inDir(dir)
	for _, p := range []*string{&o.PidFile, &o.Control} {
		*p = inDir(dir, *p)
	}
	if o.RepairPath != "none" {
		o.RepairPath = inDir(dir, o.RepairPath)
	}
	for i, s := range o.UnixFwd {
		if port, path, ok := strings.Cut(s, ":"); ok {
			o.UnixFwd[i] = port + ":" + inDir(dir, path)
		}
	}
}

// inDir does for the options passt and pasta share what Options.inDir
// does.
func (o *NetOptions) inDir(dir string) {
	o.LogFile, o.Pcap = inDir(dir, o.LogFile), inDir(dir, o.Pcap)
}

// inDir is path relative to dir, if it is a relative path.
func inDir(dir, path string) string {
	if path == "" || filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(dir, path)
}

// ownedFile is a file gopasst made, known by its device and inode as
// well as its path: clean-up removes it only while the path still names
// that file. A file that was there before gopasst started (which it
// refused to use) or that someone put at the path since is left alone.
type ownedFile struct {
	path     string
	dev, ino uint64
}

// own records the file at path as ours: call it right after making it.
func own(path string) ownedFile {
	var st unix.Stat_t
	if path == "" || unix.Lstat(path, &st) != nil {
		return ownedFile{}
	}
	return ownedFile{path, st.Dev, st.Ino}
}

// remove removes the file if the path still names the one we made.
func (f ownedFile) remove() {
	var st unix.Stat_t
	if f.path != "" && unix.Lstat(f.path, &st) == nil && st.Dev == f.dev && st.Ino == f.ino {
		unix.Unlink(f.path)
	}
}

// String is how the daemon's parent hands the socket it made to the
// daemon (envDaemon): "DEV:INO:PATH".
func (f ownedFile) String() string { return fmt.Sprintf("%d:%d:%s", f.dev, f.ino, f.path) }

// parseOwnedFile reads String's form; anything else owns nothing.
func parseOwnedFile(s string) ownedFile {
	dev, rest, _ := strings.Cut(s, ":")
	ino, path, _ := strings.Cut(rest, ":")
	d, err1 := strconv.ParseUint(dev, 10, 64)
	i, err2 := strconv.ParseUint(ino, 10, 64)
	if err1 != nil || err2 != nil || path == "" {
		return ownedFile{}
	}
	return ownedFile{path, d, i}
}

// writePidFile writes pid to path, as passt does (an existing file is
// overwritten, a new one made 0600), and returns the file as owned only
// if it made it.
func writePidFile(path string, pid int) (ownedFile, error) {
	if path == "" {
		return ownedFile{}, nil
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	f, err := os.OpenFile(path, flags, 0o600)
	made := err == nil
	if os.IsExist(err) {
		// O_CREAT again, as passt's one open has it: with it the
		// kernel's fs.protected_regular and protected_fifos refuse
		// another user's file in a sticky directory such as /tmp,
		// which that user could write a PID of its choice into later,
		// for whoever stops gopasst by the file to kill.
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	}
	if err != nil {
		return ownedFile{}, fmt.Errorf("--pid: %v", err)
	}
	var owned ownedFile
	if made {
		owned = own(path)
	}
	_, err = f.WriteString(strconv.Itoa(pid) + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		owned.remove()
		return ownedFile{}, fmt.Errorf("--pid: %v", err)
	}
	return owned, nil
}
