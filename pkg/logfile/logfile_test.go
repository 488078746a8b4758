package logfile

import (
	"fmt"
	"os"
	"path/filepath"
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
