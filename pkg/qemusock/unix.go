package qemusock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Listen binds and listens on a unix stream socket at path. A socket file
// that nobody listens on (left by a crashed instance) is replaced; one with
// a live listener is an error, so two instances never share a path.
func Listen(path string) (int, error) {
	if err := RemoveStale(path); err != nil {
		return -1, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: FileName(path)}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", path, err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listen %s: %w", path, err)
	}
	return fd, nil
}

// RemoveStale clears the way for a new socket at path: it removes a
// socket that nobody accepts on (left by a crashed instance), and refuses
// anything else there, so that no option ever deletes a file by mistake.
func RemoveStale(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	// Without waiting: a listener whose backlog is full, which anyone
	// who may connect to it can fill, would hold a blocking connect for
	// ever. It is in use, as passt takes it.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	err = unix.Connect(fd, &unix.SockaddrUnix{Name: FileName(path)})
	if err == nil || err == unix.EAGAIN {
		return fmt.Errorf("%s is in use by another process", path)
	}
	if err != unix.ECONNREFUSED {
		return fmt.Errorf("probe %s: %w", path, err)
	}
	return os.Remove(path)
}

// DefaultPath picks the first free socket in dir named by pattern (with
// %d for 1, 2 ... 100), as passt numbers its sockets.
func DefaultPath(dir, pattern string) (string, error) {
	for i := 1; i <= 100; i++ {
		p := filepath.Join(dir, fmt.Sprintf(pattern, i))
		if RemoveStale(p) == nil {
			if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("no free socket path in %s", dir)
}

// Accept takes one pending client as a non-blocking descriptor.
func Accept(lfd int) (int, error) {
	fd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		return -1, err
	}
	// Large socket buffers let a burst of frames go in one write.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 8<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	return fd, nil
}

// FileName is path as a unix socket address that names the file at path,
// as passt and the kernel take it: Go makes a name that begins with '@'
// an abstract socket, which has no file mode, so that any local user
// could bind it first or connect to it, and clean-up would miss it.
func FileName(path string) string {
	if strings.HasPrefix(path, "@") {
		return "./" + path
	}
	return path
}
