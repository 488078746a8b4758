package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMain builds gopasst once for all tests, and fails the run if the
// tests changed the mode or owner of /tmp or of any directory above
// suiteDir: the suite runs on machines that stay in use.
func TestMain(m *testing.M) {
	sweepLeftovers()
	dir, err := os.MkdirTemp("", fmt.Sprintf("gopasst-test-%d-", os.Getpid()))
	if err != nil {
		panic(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		panic(err)
	}
	suiteDir = dir
	before := statTree(dir)
	gopasstBin = filepath.Join(dir, "gopasst")
	version := "test"
	if v, err := exec.Command("git", "describe", "--always", "--dirty").Output(); err == nil {
		version = strings.TrimSpace(string(v))
	}
	// A PIE, as make build makes. The sandboxtest tag adds the engine's
	// probes (TestSandbox) and GOPASST_SECCOMP=log, which the release
	// build does not have.
	build := exec.Command("go", "build", "-tags", "sandboxtest", "-buildmode=pie", "-ldflags", "-X main.version="+version, "-o", gopasstBin, "../cmd/gopasst")
	// As make build does; GOPASST_CGO=1 builds as a plain go build or a
	// distribution's packaging would where a C compiler exists, with cgo.
	cgo := "0"
	if os.Getenv("GOPASST_CGO") == "1" {
		cgo = "1"
	}
	build.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
	out, err := build.CombinedOutput()
	if err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	// "-t all" binds tens of thousands of ports: let gopasst, which
	// inherits our limits, have the descriptors (root only; best effort).
	if nr, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(nr)), 10, 64); err == nil {
			lim := unix.Rlimit{Cur: n, Max: n}
			unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	for path, was := range before {
		if now := statTree(dir)[path]; now != was {
			fmt.Fprintf(os.Stderr, "FAIL: the tests changed %s from %s to %s\n", path, was, now)
			code = 1
		}
	}
	os.Exit(code)
}
