package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestMakeDivert runs the Makefile's install-libvirt, install-pasta and
// their uninstall targets on a scratch root (DESTDIR, dpkg-divert --root):
// an uninstall with nothing installed leaves Debian's /usr/bin/passt and
// pasta alone, and an install then an uninstall leaves them as they were.
func TestMakeDivert(t *testing.T) {
	if _, err := exec.LookPath("dpkg-divert"); err != nil {
		t.Skip("needs dpkg-divert (Debian)")
	}
	root := t.TempDir()
	bin := filepath.Join(root, "usr/bin")
	os.MkdirAll(filepath.Join(root, "var/lib/dpkg"), 0o755)
	os.MkdirAll(bin, 0o755)
	os.WriteFile(filepath.Join(root, "var/lib/dpkg/diversions"), nil, 0o644)
	os.WriteFile(filepath.Join(bin, "passt"), []byte("debian"), 0o755)
	os.Symlink("passt", filepath.Join(bin, "pasta"))
	debian := func(when string) {
		t.Helper()
		if b, err := os.ReadFile(filepath.Join(bin, "passt")); err != nil || string(b) != "debian" {
			t.Fatalf("%s: /usr/bin/passt %q, %v", when, b, err)
		}
		if l, err := os.Readlink(filepath.Join(bin, "pasta")); err != nil || l != "passt" {
			t.Fatalf("%s: /usr/bin/pasta -> %q, %v", when, l, err)
		}
	}
	make := func(target string) {
		t.Helper()
		// -o install: the diversion alone, without building or installing gopasst.
		if b, err := exec.Command("make", "-C", "..", "-o", "install", target, "DESTDIR="+root).CombinedOutput(); err != nil {
			t.Fatalf("make %s: %v\n%s", target, err, b)
		}
	}
	for _, what := range []string{"libvirt", "pasta"} {
		make("uninstall-" + what)
		debian("uninstall-" + what + " with nothing installed")
		make("install-" + what)
		name := map[string]string{"libvirt": "passt", "pasta": "pasta"}[what]
		if l, _ := os.Readlink(filepath.Join(bin, name)); l != "/usr/local/bin/gopasst" {
			t.Errorf("install-%s: /usr/bin/%s -> %q", what, name, l)
		}
		make("uninstall-" + what)
		debian("install-" + what + " then uninstall-" + what)
	}
}
