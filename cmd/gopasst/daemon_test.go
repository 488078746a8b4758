package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOwnedFile: clean-up removes a file only while its path still names
// the file gopasst made.
func TestOwnedFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("ours"), 0o600); err != nil {
		t.Fatal(err)
	}
	ours := own(p)
	if got := parseOwnedFile(ours.String()); got != ours {
		t.Errorf("round trip: %v, want %v", got, ours)
	}
	// Someone else's file put in its place survives.
	if err := os.Rename(p, filepath.Join(dir, "moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("theirs"), 0o600); err != nil {
		t.Fatal(err)
	}
	ours.remove()
	if b, err := os.ReadFile(p); string(b) != "theirs" {
		t.Fatalf("someone else's file: %q, %v", b, err)
	}
	own(p).remove()
	if _, err := os.Lstat(p); !os.IsNotExist(err) {
		t.Errorf("our own file is still there: %v", err)
	}
	ownedFile{}.remove() // owns nothing, removes nothing
	for _, s := range []string{"-", "", "1:2:", "x:2:/p"} {
		if f := parseOwnedFile(s); f != (ownedFile{}) {
			t.Errorf("%q owns %v", s, f)
		}
	}
}

// TestPidFileOwnership: a PID file gopasst made is removed at exit; one
// that was there is overwritten (as passt does) and left there.
func TestPidFileOwnership(t *testing.T) {
	dir := t.TempDir()
	made := filepath.Join(dir, "made")
	f, err := writePidFile(made, 42)
	if err != nil {
		t.Fatal(err)
	}
	f.remove()
	if _, err := os.Lstat(made); !os.IsNotExist(err) {
		t.Errorf("the PID file gopasst made is still there: %v", err)
	}
	was := filepath.Join(dir, "was")
	if err := os.WriteFile(was, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err = writePidFile(was, 42)
	if err != nil {
		t.Fatal(err)
	}
	f.remove()
	if b, err := os.ReadFile(was); string(b) != "42\n" {
		t.Errorf("the PID file that was there: %q, %v", b, err)
	}
}

// TestPidFileProtected: a PID file another user made in a sticky
// directory is refused where fs.protected_regular asks it, as passt's
// is: that user could write another PID into it later.
func TestPidFileProtected(t *testing.T) {
	if b, err := os.ReadFile("/proc/sys/fs/protected_regular"); err != nil || strings.TrimSpace(string(b)) == "0" {
		t.Skip("needs fs.protected_regular")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root, to make a file another user's")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(dir, "theirs")
	if err := os.WriteFile(theirs, []byte("1\n"), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(theirs, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := writePidFile(theirs, 42); err == nil {
		t.Error("took another user's file in a sticky directory")
	}
	if b, _ := os.ReadFile(theirs); string(b) != "1\n" {
		t.Errorf("their file is now %q", b)
	}
}
