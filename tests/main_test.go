package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
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
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
