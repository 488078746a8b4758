package qemusock

import (
	"os"
	"path/filepath"
	"testing"

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
