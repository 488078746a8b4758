package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/tcprepair"
	"golang.org/x/sys/unix"
)

// repairOptions are gopasst repair's: passt-repair's command line.
type repairOptions struct {
	Path string `arg:"" placeholder:"PATH" help:"The back-end's repair socket (<socket>.repair), or a directory: wait for a *.repair socket to appear there."`
}

// runRepair is gopasst's passt-repair: it sets TCP_REPAIR on the sockets
// a back-end (gopasst or passt) passes it, for live migration. It needs
// CAP_NET_ADMIN over the user namespace that owns the back-end's network
// namespace: root, or the file capability (setcap cap_net_admin+ep), on
// a copy of gopasst, which then runs as nothing else (runPrivileged).
func runRepair(o *repairOptions, stderr io.Writer) int {
	// Sockets of another process pass through here: keep them from
	// ptrace and core dumps.
	unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
	path := o.Path
	st, err := os.Stat(path)
	if err != nil {
		return fail(stderr, "repair: %v", err)
	}
	if st.IsDir() {
		if path, err = awaitRepairSocket(path); err != nil {
			return fail(stderr, "repair: %v", err)
		}
		// What appeared may be anything: connecting to a file that is
		// not a socket is refused, as to one that does not listen yet,
		// and would be tried again for ever.
		if st, err = os.Stat(path); err != nil {
			return fail(stderr, "repair: %v", err)
		}
	}
	if st.Mode().Type() != os.ModeSocket {
		return fail(stderr, "repair: %s is not a socket", path)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(stderr, "repair: %v", err)
	}
	for {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: qemusock.FileName(path)})
		// A socket that just appeared may not listen yet.
		if err != unix.ECONNREFUSED || path == o.Path {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return fail(stderr, "repair: connecting to %s: %v", path, err)
	}
	// From here on it only repairs sockets: no new privileges, and a
	// filter that allows only the repair loop's calls and kills for an
	// attacker's.
	if err := installRepairSeccomp(); err != nil {
		return fail(stderr, "repair: %v", err)
	}
	if err := tcprepair.Serve(fd); err != nil {
		return fail(stderr, "repair: %v", err)
	}
	return 0
}

// awaitRepairSocket waits for a file whose name ends in .repair to be
// created in dir, as passt-repair does for KubeVirt, which starts the
// helper before the back-end.
func awaitRepairSocket(dir string) (string, error) {
	in, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return "", err
	}
	defer unix.Close(in)
	if _, err := unix.InotifyAddWatch(in, dir, unix.IN_CREATE); err != nil {
		return "", fmt.Errorf("watching %s: %v", dir, err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(in, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", err
		}
		for b := buf[:n]; len(b) >= unix.SizeofInotifyEvent; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
			end := unix.SizeofInotifyEvent + int(ev.Len)
			if end > len(b) {
				break
			}
			name := strings.TrimRight(string(b[unix.SizeofInotifyEvent:end]), "\x00")
			if strings.HasSuffix(name, ".repair") {
				return filepath.Join(dir, name), nil
			}
			b = b[end:]
		}
	}
}
