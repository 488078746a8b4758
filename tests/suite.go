package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// suiteDir is the directory the suite creates for everything it makes:
// mode 0755, so that nobody (passt, gopasst ns as nobody) can reach what
// the tests hand it without the suite touching any directory above.
var suiteDir string

// statTree describes the mode and owner of /tmp and of every directory
// above dir.
func statTree(dir string) map[string]string {
	out := map[string]string{}
	for _, d := range append(ancestors(dir), "/tmp") {
		var st unix.Stat_t
		if err := unix.Stat(d, &st); err == nil {
			out[d] = fmt.Sprintf("mode %o uid %d gid %d", st.Mode&0o7777, st.Uid, st.Gid)
		}
	}
	return out
}

// ancestors lists the directories above path, nearest first.
func ancestors(path string) []string {
	var out []string
	for d := filepath.Dir(path); ; d = filepath.Dir(d) {
		out = append(out, d)
		if d == "/" || d == "." {
			return out
		}
	}
}

// sharedDir creates a directory under suiteDir that anyone may write (for
// sockets made by processes that run as nobody) and removes it when the
// test ends.
func sharedDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp(suiteDir, "shared-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o777); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// needReachable skips a test that hands nobody a path under suiteDir when
// a directory above it is closed to others: the suite changes no mode it
// did not set.
func needReachable(t testing.TB) {
	t.Helper()
	for _, d := range ancestors(suiteDir) {
		var st unix.Stat_t
		if unix.Stat(d, &st) != nil || st.Mode&0o001 == 0 {
			t.Skipf("needs %s searchable by others, for nobody to reach the test binary (set TMPDIR elsewhere)", d)
		}
	}
}
