package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRepairDirectoryNotSocket: gopasst repair watching a directory where
// a file that is not a socket appears with the name of a repair socket
// fails, as passt-repair does, instead of trying to connect to it for
// ever.
func TestRepairDirectoryNotSocket(t *testing.T) {
	dir := t.TempDir()
	done := make(chan int, 1)
	go func() { done <- runRepair(&repairOptions{Path: dir}, io.Discard) }()
	// A file made before the watch is not seen: make one until one is.
	for i := 0; ; i++ {
		select {
		case code := <-done:
			if code == 0 {
				t.Fatal("exit status 0")
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
		if i == 40 {
			t.Fatal("still trying after 2 s")
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%d.repair", i)), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
