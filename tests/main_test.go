package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMain builds gopasst once for all tests.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gopasst-test-")
	if err != nil {
		panic(err)
	}
	gopasstBin = filepath.Join(dir, "gopasst")
	out, err := exec.Command("go", "build", "-o", gopasstBin, "../cmd/gopasst").CombinedOutput()
	if err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	// "-t all" binds tens of thousands of ports: let gopasst, which
	// inherits our limits, have the descriptors (root only; best effort).
	lim := unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
