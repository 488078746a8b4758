package logfile

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestBounded writes far more than the bound and checks the file never
// passes it, keeps its header, starts on a line boundary and holds the
// newest line.
func TestBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	const bound = 4096
	l, err := Open(path, bound, "header line")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 5000 {
		fmt.Fprintf(l, "line %05d %s\n", i, strings.Repeat("x", i%50))
		if st, _ := os.Stat(path); st.Size() > bound {
			t.Fatalf("after line %d the file has %d bytes", i, st.Size())
		}
	}
	data, _ := os.ReadFile(path)
	s := string(data)
	if !strings.HasPrefix(s, "header line\nline ") {
		t.Fatalf("header or line boundary lost: %q", s[:40])
	}
	if !strings.HasSuffix(s, "line 04999 "+strings.Repeat("x", 4999%50)+"\n") {
		t.Fatal("newest line missing")
	}
}

func TestHugeWriteKeepsTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	l, err := Open(path, 2048, "")
	if err != nil {
		t.Fatal(err)
	}
	l.Write([]byte(strings.Repeat("a", 10000) + "END\n"))
	st, _ := os.Stat(path)
	data, _ := os.ReadFile(path)
	if st.Size() > 2048 || !strings.HasSuffix(string(data), "END\n") {
		t.Fatalf("size %d", st.Size())
	}
}

func TestTooSmallBound(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "log"), 10, ""); err == nil {
		t.Fatal("accepted a 10-byte bound")
	}
}

// TestDropOldestMemory: dropping the oldest lines of a large log moves
// the rest a piece at a time, without reading it all into memory: a
// --log-size of gigabytes would otherwise cost as much memory each time
// the log (which a guest can fill, at --debug) reaches its bound.
func TestDropOldestMemory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	const bound = 16 << 20
	l, err := Open(path, bound, "header line")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	line := []byte(strings.Repeat("x", 1023) + "\n")
	for l.size+int64(len(line)) <= bound {
		l.Write(line)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	newest := strings.Repeat("n", 1023) + "\n"
	l.Write([]byte(newest))
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Errorf("dropping old lines allocated %d bytes", n)
	}
	data, _ := os.ReadFile(path)
	s := string(data)
	if !strings.HasPrefix(s, "header line\nxxx") || !strings.HasSuffix(s, "\n"+string(line)+newest) || len(s) > bound || len(s) < bound/2 {
		t.Fatalf("after dropping: %d bytes, starting %.20q, ending %.20q", len(s), s, s[max(len(s)-20, 0):])
	}
}
