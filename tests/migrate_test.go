package tests

import (
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/pkg/tcprepair"
	"golang.org/x/sys/unix"
)

// passtRepairPath is upstream's passt-repair, built (once, into the test
// cache) from the tarball in ../shared/peers beside passt.
func passtRepairPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PASST"); p != "" {
		return filepath.Join(filepath.Dir(p), "passt-repair")
	}
	script, _ := filepath.Abs("../../shared/peers/build-passt.sh")
	if _, err := os.Stat(script); err != nil {
		t.Skipf("no upstream passt to build: %v", err)
	}
	cache, _ := filepath.Abs(".cache/passt")
	out, err := exec.Command(script, cache).Output()
	if err != nil {
		t.Fatalf("building upstream passt: %v", err)
	}
	return filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "passt-repair")
}

// TestRepairHelper moves one end of a TCP connection, with data queued
// both ways, through each repair helper over passt's protocol: upstream's
// passt-repair, unchanged, and gopasst repair; each given the socket, or
// a directory to watch for it as KubeVirt does. The test is the back-end:
// it listens on the repair socket, passes the sockets and reads and
// restores them with pkg/tcprepair. Both streams arrive whole, once, in
// order (SHA-256).
func TestRepairHelper(t *testing.T) {
	needRoot(t)
	for _, helper := range []string{"gopasst", "passt-repair"} {
		for _, dirMode := range []bool{false, true} {
			name := helper + "/socket"
			if dirMode {
				name = helper + "/directory"
			}
			t.Run(name, func(t *testing.T) {
				argv := []string{gopasstBin, "repair"}
				if helper == "passt-repair" {
					argv = []string{passtRepairPath(t)}
				}
				repairThroughHelper(t, argv, dirMode)
			})
		}
	}
}

func repairThroughHelper(t *testing.T, argv []string, dirMode bool) {
	dir := sharedDir(t)
	path := filepath.Join(dir, "gopasst.socket.repair")
	var stderr bytes.Buffer
	var helper *exec.Cmd
	start := func(arg string) {
		helper = exec.Command(argv[0], append(argv[1:], arg)...)
		helper.Stderr = &stderr
		if err := helper.Start(); err != nil {
			t.Fatal(err)
		}
	}
	if dirMode {
		start(dir)
		waitInotifyWatch(t, helper.Process.Pid)
	}
	l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(l)
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Listen(l, 1)
	if !dirMode {
		start(path)
	}
	cfd, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	client := tcprepair.NewClient(cfd)
	set := func(cmd int8, fd int) {
		t.Helper()
		if err := client.Set(cmd, []int{fd}); err != nil {
			t.Fatalf("%v (helper: %s)", err, stderr.String())
		}
	}

	ns := newNetns(t, "repair")
	var a, b int
	var aAddr, bAddr unix.Sockaddr
	ns.Do(t, func() {
		ln, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		defer unix.Close(ln)
		unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
		unix.Listen(ln, 1)
		bAddr, _ = unix.Getsockname(ln)
		a, _ = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err = unix.Connect(a, bAddr); err == nil {
			aAddr, _ = unix.Getsockname(a)
			b, _, err = unix.Accept4(ln, unix.SOCK_CLOEXEC)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(b)
	ab, _ := io.ReadAll(newStream(1, 8<<20))
	ba, _ := io.ReadAll(newStream(2, 8<<20))
	abSent, baSent := pushSome(a, ab), pushSome(b, ba)

	set(tcprepair.On, a)
	st, err := tcprepair.Dump(a)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(a)
	var a2 int
	ns.Do(t, func() { a2, err = tcprepair.NewSocket(unix.AF_INET) })
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(a2)
	set(tcprepair.On, a2)
	if err := tcprepair.Restore(a2, st, aAddr, bAddr); err != nil {
		t.Fatal(err)
	}
	set(tcprepair.Off, a2)
	rest, err := tcprepair.Resume(a2, st)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("moved with %d bytes queued to send (%d of them unsent), %d received unread; %d of %d and %d of %d bytes sent before",
		len(st.SendQ), st.NotSent, len(st.RecvQ), abSent, len(ab), baSent, len(ba))
	client.Close()
	if err := helper.Wait(); err != nil {
		t.Errorf("helper: %v: %s", err, stderr.String())
	}

	unix.SetNonblock(a2, false)
	errc := make(chan error, 4)
	go func() { errc <- writeAll(a2, append(rest, ab[abSent:]...), true) }()
	go func() { errc <- writeAll(b, ba[baSent:], true) }()
	got := make([][32]byte, 2)
	go func() { var e error; got[0], e = readHash(b); errc <- e }()
	go func() { var e error; got[1], e = readHash(a2); errc <- e }()
	for range 4 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if got[0] != sha256.Sum256(ab) {
		t.Error("a to b: the stream differs")
	}
	if got[1] != sha256.Sum256(ba) {
		t.Error("b to a: the stream differs")
	}
}

// waitInotifyWatch waits until process pid watches a directory with
// inotify: before that, a socket made there would go unseen.
func waitInotifyWatch(t *testing.T, pid int) {
	t.Helper()
	fdinfo := filepath.Join("/proc", strconv.Itoa(pid), "fdinfo")
	for range 20000 {
		ents, _ := os.ReadDir(fdinfo)
		for _, e := range ents {
			if b, _ := os.ReadFile(filepath.Join(fdinfo, e.Name())); strings.Contains(string(b), "inotify wd:") {
				return
			}
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	t.Fatal("the helper never watched the directory")
}

// pushSome writes from data on fd without blocking until the kernel
// takes no more, and returns how much it took.
func pushSome(fd int, data []byte) int {
	sent := 0
	for sent < len(data) {
		n, err := unix.SendmsgN(fd, data[sent:min(sent+64<<10, len(data))], nil, nil, unix.MSG_DONTWAIT)
		if err != nil {
			break
		}
		sent += n
	}
	return sent
}

// writeAll writes data on the blocking socket fd, then shuts it down
// for writing if fin.
func writeAll(fd int, data []byte, fin bool) error {
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if err != nil && err != unix.EINTR {
			return err
		}
		data = data[max(n, 0):]
	}
	if fin {
		return unix.Shutdown(fd, unix.SHUT_WR)
	}
	return nil
}

// readHash reads the blocking socket fd to EOF and returns the SHA-256
// of what came.
func readHash(fd int) ([32]byte, error) {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return [32]byte{}, err
		}
		if n == 0 {
			return [32]byte(h.Sum(nil)), nil
		}
		h.Write(buf[:n])
	}
}
