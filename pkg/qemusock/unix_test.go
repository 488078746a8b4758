package qemusock

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestListenAtSign: a socket path that begins with '@' names a file, as
// for passt, never an abstract socket, which any local user could reach
// whatever the file modes; a stale one is replaced there too.
func TestListenAtSign(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	name := "@" + filepath.Base(filepath.Dir(dir)) // unique among abstract names too
	for range 2 {                                  // the second time, over the first's stale socket
		fd, err := Listen(name)
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Lstat(filepath.Join(dir, name))
		if err != nil || st.Mode().Type() != os.ModeSocket {
			t.Fatalf("no socket file %s in %s: %v", name, dir, err)
		}
		c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Connect(c, &unix.SockaddrUnix{Name: name}) // abstract
		unix.Close(c)
		unix.Close(fd) // stale from here on
		if err == nil {
			t.Fatalf("an abstract socket %s listens", name)
		}
	}
}

// TestRemoveStaleFullBacklog: a socket whose listener's backlog is full
// (anyone who may connect can fill it) is in use: the probe does not
// wait for room, which a listener that never accepts never makes.
func TestRemoveStaleFullBacklog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "full")
	l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(l)
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Listen(l, 0)
	for { // fill the backlog
		c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(c)
		if unix.Connect(c, &unix.SockaddrUnix{Name: path}) == unix.EAGAIN {
			break
		}
	}
	done := make(chan error, 1)
	go func() { done <- RemoveStale(path) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a socket in use taken for stale")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the probe waits for room in the backlog")
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatal(err)
	}
}
