package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestControlPath: --control replaces only a stale socket; a file or a
// live socket at its path is an error and is left as it was.
func TestControlPath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "hosts")
	if err := os.WriteFile(file, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if l, err := listenControl(file); err == nil {
		l.Close()
		t.Fatal("--control on a regular file succeeded")
	} else if !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("error %q does not say why", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Fatalf("the file is now %q, %v", b, err)
	}

	live := filepath.Join(dir, "live")
	l, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if c, err := listenControl(live); err == nil {
		c.Close()
		t.Fatal("--control took over a live socket")
	}

	stale := filepath.Join(dir, "stale")
	sl, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	sl.(*net.UnixListener).SetUnlinkOnClose(false)
	sl.Close()
	c, err := listenControl(stale)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	c.Close()
}
