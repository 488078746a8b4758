package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// gvisorTapVsock is the gvisor-tap-vsock release whose gvforwarder (its
// cmd/vm) the tests run against gopasst, and whose gvproxy the benchmark
// measures.
const gvisorTapVsock = "v0.8.9"

// goInstall installs the command pkg@version with go install into
// tests/.cache/bin, never into gopasst's module, once, static (a QEMU
// guest has no libc), and returns its path.
func goInstall(pkg, version string) (string, error) {
	dir, _ := filepath.Abs(filepath.Join(".cache", "bin"))
	p := filepath.Join(dir, path.Base(pkg))
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	cmd := exec.Command("go", "install", pkg+"@"+version)
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s@%s failed: %v: %s", pkg, version, err, strings.TrimSpace(string(out)))
	}
	return p, nil
}
