package slirp

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
	_ "unsafe" // go:linkname, for the helper's time below

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"github.com/gopasst/gopasst/pkg/tcprepair"
	"golang.org/x/sys/unix"
)

// A migration's destination restores its connections by batches of
// tcprepair.MaxFds, the repair helper taking batch k-1 out of repair
// mode and putting batch k+1 in while batch k is restored. Here the
// helper fails at each point of that pipeline, and the stream, from
// another host, names a flow twice or ends in the middle of a batch:
// the load must neither panic nor hang, leave no descriptor behind, and
// leave each connection either restored and working, or reset for the
// guest, once.

// repairReplyTimeout is the helper's time in all (tcprepair's
// replyTimeout): a helper that never answers would hold each case for
// ten seconds.
//
//go:linkname repairReplyTimeout github.com/gopasst/gopasst/pkg/tcprepair.replyTimeout
var repairReplyTimeout time.Duration

// shortReplyTimeout gives helpers d for the rest of the test.
func shortReplyTimeout(t *testing.T, d time.Duration) {
	was := repairReplyTimeout
	repairReplyTimeout = d
	t.Cleanup(func() { repairReplyTimeout = was })
}

// helperMsg is a message the scripted helper received: its command and
// sockets, and how many of each command it had before.
type helperMsg struct {
	i           int
	cmd         int8
	fds         int
	onMsgs      int // On messages before this one
	offMsgs     int // Off messages before this one
	offSocketsB int // sockets of the Off messages before this one
	at          time.Time
}

// helperAct is what the scripted helper does with a message.
type helperAct uint8

const (
	helperOK     helperAct = iota
	helperDie              // goes away, the message's sockets untouched
	helperCrash            // sets their mode, goes away without answering
	helperWrong            // sets their mode, answers another command
	helperSilent           // sets their mode, never answers (reads on)
)

func (a helperAct) String() string {
	return [...]string{"answers", "dies", "crashes after setting", "answers a wrong byte", "never answers"}[a]
}

// scriptedHelper is a repair helper, in-process (the test is root),
// that receives as upstream passt-repair does (the control buffer's
// length the message before left) and does what its script says.
type scriptedHelper struct {
	c    *tcprepair.Client
	fd   int // the helper's end
	done chan struct{}
	mu   sync.Mutex
	msgs []helperMsg
	acts []helperAct
}

func startScriptedHelper(t *testing.T, script func(m helperMsg) helperAct) *scriptedHelper {
	t.Helper()
	needRepair(t)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	h := &scriptedHelper{c: tcprepair.NewClient(sp[0]), fd: sp[1], done: make(chan struct{})}
	go h.serve(script)
	t.Cleanup(func() {
		unix.Shutdown(h.fd, unix.SHUT_RDWR)
		<-h.done
		unix.Close(h.fd)
	})
	return h
}

func (h *scriptedHelper) serve(script func(m helperMsg) helperAct) {
	defer close(h.done)
	oob := make([]byte, unix.CmsgSpace(4*tcprepair.MaxFds))
	ctl := len(oob)
	var m helperMsg
	for {
		var cmd [1]byte
		n, oobn, _, _, err := unix.Recvmsg(h.fd, cmd[:], oob[:ctl], unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return
		}
		ctl = oobn // passt-repair never sets msg_controllen again
		var fds []int
		if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for i := range cms {
				got, _ := unix.ParseUnixRights(&cms[i])
				fds = append(fds, got...)
			}
		}
		m.cmd, m.fds, m.at = int8(cmd[0]), fdsAsked(fds), time.Now()
		act := script(m)
		h.mu.Lock()
		h.msgs, h.acts = append(h.msgs, m), append(h.acts, act)
		h.mu.Unlock()
		for _, s := range fds {
			if act != helperDie {
				unix.SetsockoptInt(s, unix.SOL_TCP, unix.TCP_REPAIR, int(m.cmd))
			}
			unix.Close(s)
		}
		m.i++
		if m.cmd == tcprepair.On {
			m.onMsgs++
		} else {
			m.offMsgs++
			m.offSocketsB += m.fds
		}
		switch act {
		case helperDie, helperCrash:
			unix.Shutdown(h.fd, unix.SHUT_RDWR)
			return
		case helperWrong:
			unix.Write(h.fd, []byte{cmd[0] ^ 1})
		case helperOK:
			unix.Write(h.fd, cmd[:])
		}
	}
}

// fdsAsked counts a message's sockets less the copies of one socket
// never connected that fill it to MaxFds (tcprepair.Client.Send): a
// trailing run of one file. (A message of MaxFds-1 sockets and one copy
// counts as full.)
func fdsAsked(fds []int) int {
	if len(fds) < 2 {
		return len(fds)
	}
	ino := func(fd int) uint64 {
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		return st.Ino
	}
	last := ino(fds[len(fds)-1])
	if ino(fds[len(fds)-2]) != last {
		return len(fds)
	}
	n := 0
	for _, fd := range fds {
		if ino(fd) != last {
			n++
		}
	}
	return n
}

// log is what the helper received, and did, so far.
func (h *scriptedHelper) log() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b bytes.Buffer
	for i, m := range h.msgs {
		fmt.Fprintf(&b, "[%d: cmd %d, %d sockets, %v] ", m.i, m.cmd, m.fds, h.acts[i])
	}
	return b.String()
}

// stop ends the helper, the engine's end closed if e still holds it,
// and waits for it: it holds no socket after.
func (h *scriptedHelper) stop(t *testing.T, e *Engine) {
	t.Helper()
	if e.repair == h.c {
		e.repair.Close()
		e.repair = nil
	}
	unix.Shutdown(h.fd, unix.SHUT_RDWR)
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the scripted helper does not end")
	}
}

// moveSource is a source engine with n flows of manyFlows beside the hot
// path's own connection, saved with a good helper: the stream, parsed
// for the test to edit, and each flow's peer by its key.
func moveSource(t *testing.T, n int) (*hotPath, *migStream, map[tcpKey]net.Conn) {
	t.Helper()
	h := newHotPath(t, sinkServer)
	h.e.repair = startRepairHelper(t)
	peers := manyFlows(t, h, n)
	var stream bytes.Buffer
	if err := h.e.migrateSave(&stream); err != nil {
		t.Fatal(err)
	}
	s, err := readMigration(&stream, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.flows) != n+1 {
		t.Fatalf("the stream has %d flows, want %d", len(s.flows), n+1)
	}
	return h, s, peers
}

// hostileDestination is the destination for h's guest, its flows'
// sockets closed when the test ends: the engine is never closed, and
// tests of a thousand connections each would run out of descriptors.
func hostileDestination(t *testing.T, h *hotPath) *hotPath {
	t.Helper()
	d := h.destination(t)
	t.Cleanup(func() {
		d.e.tcp.each(func(_ int32, f *tcpFlow) {
			unix.Close(f.fd)
		})
	})
	return d
}

// loadWithin loads r into d's engine, failing the test rather than
// hanging: the helper's time bounds any wait on it.
func loadWithin(t *testing.T, d *hotPath, r io.Reader) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- d.e.migrateLoad(r) }()
	select {
	case err := <-done:
		return time.Since(start), err
	case <-time.After(time.Minute):
		t.Fatal("the load still runs after a minute")
		return 0, nil
	}
}

// inRepair says that the socket fd is in repair mode: it sends nothing,
// and its connection is neither working nor reset.
func inRepair(fd int) bool {
	v, err := unix.GetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR)
	return err == nil && v != 0
}

// outcome is what a load left of the peers' connections.
type outcome struct {
	kept, reset map[tcpKey]bool
	hung        []tcpKey       // kept, the socket still in repair mode
	rst         map[uint16]int // resets to the guest, by its port
}

// checkLoad checks, after d's load, every connection of peers: kept by
// the engine, out of repair mode, working both ways (its peer reads
// first any bytes of want) and with no reset to the guest; or gone,
// with one reset to the guest (none when noReset: a load refused, the
// guest goes on at its source). No descriptor is open that was not in
// before, but the flows'. Connections kept in repair mode are returned,
// not failed: see TestMigrateLoadHostileHelperRepairModeKept.
func checkLoad(t *testing.T, d *hotPath, peers map[tcpKey]net.Conn, before map[string]string, noReset bool, want map[tcpKey][]byte) outcome {
	t.Helper()
	o := outcome{kept: map[tcpKey]bool{}, reset: map[tcpKey]bool{}}
	flowFds := map[string]bool{}
	d.e.tcp.each(func(_ int32, f *tcpFlow) { flowFds[fmt.Sprint(f.fd)] = true })
	if leaked := slices.DeleteFunc(leakedFds(t, before), func(s string) bool {
		var fd, name string
		fmt.Sscan(s, &fd, &name)
		return flowFds[fd]
	}); len(leaked) > 0 {
		t.Errorf("descriptors left open: %v", leaked)
	}
	for key, c := range peers {
		_, f := d.e.tcp.lookup(key)
		if f == nil {
			continue
		}
		o.kept[key] = true
		if inRepair(f.fd) {
			o.hung = append(o.hung, key)
			continue
		}
		if w := want[key]; len(w) > 0 {
			got := make([]byte, len(w))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, w) {
				t.Errorf("%v: the peer read %d of the %d bytes never sent, %v", key, n, len(w), err)
				continue
			}
		}
		bothWays(t, f, c, "to")
	}
	rst := map[uint16]int{}
	for quiet, i := 0, 0; quiet < 3 && i < 100; i++ {
		d.e.turn(2)
		frames := 0
		d.readFrames(func(s header.TCP) {
			frames++
			if isRst(s) {
				rst[s.DstPort()]++
			}
		})
		if frames == 0 {
			quiet++
		} else {
			quiet = 0
		}
	}
	wrong := 0
	for key := range peers {
		want := 1
		if o.kept[key] || noReset {
			want = 0
		}
		if got := rst[key.guest.Port()]; got != want {
			if wrong++; wrong <= 5 {
				t.Errorf("%v (kept %v): %d resets to the guest, want %d", key, o.kept[key], got, want)
			}
		}
		if !o.kept[key] && rst[key.guest.Port()] > 0 {
			o.reset[key] = true
		}
	}
	if wrong > 5 {
		t.Errorf("and %d connections more with the wrong number of resets", wrong-5)
	}
	o.rst = rst
	return o
}

// stillServes moves one more connection, from another source, into d's
// engine with a good helper: the engine took the hostile load and goes
// on.
func stillServes(t *testing.T, d *hotPath) {
	t.Helper()
	h := newHotPath(t, sinkServer)
	h.e.repair = startRepairHelper(t)
	peers := manyFlowsFrom(t, h, 30000, 1)
	var stream bytes.Buffer
	if err := h.e.migrateSave(&stream); err != nil {
		t.Fatal(err)
	}
	d.e.repair = startRepairHelper(t)
	t.Cleanup(func() { d.e.repair = nil }) // startRepairHelper closes it
	if _, err := loadWithin(t, d, &stream); err != nil {
		t.Fatalf("a good load after the hostile one: %v", err)
	}
	for key, c := range peers {
		_, f := d.e.tcp.lookup(key)
		if f == nil {
			t.Fatal("a good load after the hostile one moved nothing")
		}
		bothWays(t, f, c, "to")
	}
}

// fourBatches is the flows, beside the hot path's own, of a stream of
// four batches: the helper's ring of three wraps.
const fourBatches = 3*tcprepair.MaxFds + 40

// TestMigrateLoadHostileHelper: the helper dies, answers a wrong byte,
// or never answers, at each point of a load of four batches: the first
// On answered, then gone at the next; with Off(k-1) and On(k+1) both
// outstanding; at the final flush. No panic, no hang beyond the
// helper's time, no descriptor left, each connection restored and
// working or reset for the guest once, those whose batch left repair
// mode before the fault kept, and the engine takes a good helper's
// migration after. A batch whose Off was never sent (the helper dropped
// for a fault on another request) or not answered is reset, not kept
// with its sockets in repair mode, where they would send nothing.
func TestMigrateLoadHostileHelper(t *testing.T) {
	helperFaults(t, []helperAct{helperDie, helperCrash, helperWrong, helperSilent})
}

func helperFaults(t *testing.T, acts []helperAct) {
	shortReplyTimeout(t, 300*time.Millisecond)
	type point struct {
		name     string
		at       func(m helperMsg) bool
		keptLead int // the stream's first flows, whose batches left repair mode first
	}
	points := []point{
		{"at the first On", func(m helperMsg) bool { return m.cmd == tcprepair.On && m.onMsgs == 0 }, 0},
		{"at the second On (the first answered)", func(m helperMsg) bool { return m.cmd == tcprepair.On && m.onMsgs == 1 }, 0},
		{"at Off(0), On(2) outstanding", func(m helperMsg) bool { return m.cmd == tcprepair.Off && m.offMsgs == 0 }, 0},
		{"at On(2), Off(0) answered", func(m helperMsg) bool { return m.cmd == tcprepair.On && m.onMsgs == 2 }, tcprepair.MaxFds},
		{"at Off(1), On(3) outstanding", func(m helperMsg) bool { return m.cmd == tcprepair.Off && m.offSocketsB == tcprepair.MaxFds }, tcprepair.MaxFds},
		{"at the final flush", func(m helperMsg) bool { return m.cmd == tcprepair.Off && m.offSocketsB >= 3*tcprepair.MaxFds }, 3 * tcprepair.MaxFds},
	}
	for _, p := range points {
		for _, act := range acts {
			t.Run(p.name+", "+act.String(), func(t *testing.T) {
				h, s, peers := moveSource(t, fourBatches)
				stream := appendMigration(nil, s)
				d := hostileDestination(t, h)
				failed := false
				helper := startScriptedHelper(t, func(m helperMsg) helperAct {
					if failed || p.at(m) {
						failed = true
						return act
					}
					return helperOK
				})
				d.e.repair = helper.c
				before := openFds(t)
				took, err := loadWithin(t, d, bytes.NewReader(stream))
				if err != nil {
					t.Fatalf("the load failed: %v", err)
				}
				if took > 5*time.Second {
					t.Errorf("the load took %v with a helper allowed %v", took, repairReplyTimeout)
				}
				if d.e.repair != nil {
					t.Errorf("the helper that failed is still the engine's: %s", helper.log())
				}
				helper.stop(t, d.e)
				if !failed {
					t.Fatalf("the helper never reached its fault: %s", helper.log())
				}
				o := checkLoad(t, d, peers, before, false, nil)
				for i := range p.keptLead {
					if key := s.flows[i].tcp.key(); peers[key] != nil && !o.kept[key] {
						t.Errorf("flow %d of the stream, whose batch left repair mode before the fault, was not kept", i)
						break
					}
				}
				t.Logf("%d kept (%d in repair mode), %d reset, in %v; helper: %s", len(o.kept), len(o.hung), len(o.reset), took.Round(time.Millisecond), helper.log())
				if len(o.hung) > 0 {
					t.Errorf("%d connections kept with their sockets in repair mode: neither working nor reset for the guest", len(o.hung))
				}
				stillServes(t, d)
			})
		}
	}
}

// goodHelper is a scripted helper that answers every message, as
// upstream passt-repair receives them.
func goodHelper(t *testing.T) *scriptedHelper {
	return startScriptedHelper(t, func(helperMsg) helperAct { return helperOK })
}

// withFlows is s with its flows replaced.
func withFlows(s *migStream, flows []migFlow) *migStream {
	s2 := *s
	s2.flows = flows
	return &s2
}

// TestMigrateLoadHostileDuplicates: a stream names a flow twice, the
// copies in batches k-1 and k (the first still in repair mode, its Off
// outstanding, as the second is read), in one batch, in batches k-2 and
// k, or the last of one batch and the first of the next; or names two
// flows of the guest on one host connection. No connection is restored
// twice: the copy's socket is closed, no reset reaches the guest for the
// flow restored, and every connection works.
func TestMigrateLoadHostileDuplicates(t *testing.T) {
	const n = 2*tcprepair.MaxFds + 60 // three batches
	for _, tc := range []struct {
		name      string
		from, to  []int // the stream's flow from[i] copied to index to[i], in order
		otherPort bool  // the copy is another flow of the guest's, on the same host connection
	}{
		{"in batches k-1 and k", []int{100}, []int{tcprepair.MaxFds + 10}, false},
		{"in one batch", []int{5}, []int{20}, false},
		{"in batches k-2 and k", []int{7}, []int{2*tcprepair.MaxFds + 3}, false},
		{"the last of batch k-1, the first of k", []int{tcprepair.MaxFds - 1}, []int{tcprepair.MaxFds}, false},
		{"many, in every batch", []int{1, 2, 3, tcprepair.MaxFds + 1, 2 * tcprepair.MaxFds}, []int{10, tcprepair.MaxFds + 2, 2*tcprepair.MaxFds + 1, 2*tcprepair.MaxFds + 2, 2*tcprepair.MaxFds + 50}, false},
		{"one host connection, two guest flows, batches k-1 and k", []int{100}, []int{tcprepair.MaxFds + 10}, true},
		{"one host connection, two guest flows, one batch", []int{30}, []int{31}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, s, peers := moveSource(t, n)
			flows := slices.Clone(s.flows)
			var copies []tcpKey
			for i, from := range tc.from {
				c := flows[from]
				if tc.otherPort {
					g := &c.tcp.side[c.tcp.tapSide()]
					g.eport += 10000
				}
				copies = append(copies, c.tcp.key())
				flows = slices.Insert(flows, tc.to[i], c)
			}
			stream := appendMigration(nil, withFlows(s, flows))
			d := hostileDestination(t, h)
			helper := goodHelper(t)
			d.e.repair = helper.c
			before := openFds(t)
			if _, err := loadWithin(t, d, bytes.NewReader(stream)); err != nil {
				t.Fatalf("the load failed: %v", err)
			}
			helper.stop(t, d.e)
			o := checkLoad(t, d, peers, before, false, nil)
			if len(o.kept) != len(peers) || len(o.hung) > 0 {
				t.Errorf("%d of %d connections kept, %d in repair mode; helper: %s", len(o.kept), len(peers), len(o.hung), helper.log())
			}
			if d.e.tcp.count != n+1 {
				t.Errorf("%d flows from a stream of %d, %d of them distinct", d.e.tcp.count, len(flows), n+1)
			}
			if tc.otherPort {
				for _, key := range copies {
					if _, f := d.e.tcp.lookup(key); f != nil {
						t.Errorf("%v, a second guest flow on a host connection restored already, was restored", key)
					}
					if got := o.rst[key.guest.Port()]; got != 1 {
						t.Errorf("%v, a second guest flow on a host connection restored already: %d resets to the guest, want 1", key, got)
					}
				}
			}
		})
	}
}

// TestMigrateLoadHostileTruncated: a stream that ends in the middle of a
// flow's socket: of batch 0 with On(1) outstanding; at the first flow of
// batch 1, with Off(0) and On(2) outstanding and nothing of batch 1
// restored; in the middle of batch 2, some of it restored, Off(1) and
// On(3) outstanding; at the last flow, before the final flush. The load
// is refused; the flows read before are kept and work, the sockets made
// for the others are closed, and no reset reaches the guest, which goes
// on at its source.
func TestMigrateLoadHostileTruncated(t *testing.T) {
	for _, at := range []int{50, tcprepair.MaxFds, 2*tcprepair.MaxFds + 100, fourBatches} {
		t.Run(fmt.Sprintf("at flow %d", at), func(t *testing.T) {
			h, s, peers := moveSource(t, fourBatches)
			stream := appendMigHead(nil, s)
			for i := range at {
				stream = appendMigExt(stream, &s.flows[i].sock)
			}
			stream = append(stream, appendMigExt(nil, &s.flows[at].sock)[:30]...)
			d := hostileDestination(t, h)
			helper := goodHelper(t)
			d.e.repair = helper.c
			before := openFds(t)
			if _, err := loadWithin(t, d, bytes.NewReader(stream)); err == nil {
				t.Fatal("a stream cut short loaded")
			}
			if d.e.repair != helper.c {
				t.Error("a stream cut short dropped a good helper")
			}
			helper.stop(t, d.e)
			o := checkLoad(t, d, peers, before, true, nil)
			for i := range s.flows {
				key := s.flows[i].tcp.key()
				if peers[key] != nil && o.kept[key] != (i < at) {
					t.Errorf("flow %d of the stream, cut at %d: kept %v", i, at, o.kept[key])
				}
			}
			if len(o.hung) > 0 {
				t.Errorf("%d connections kept in repair mode; helper: %s", len(o.hung), helper.log())
			}
		})
	}
}

// TestMigrateLoadHostileUnsent: flows whose bytes never sent, held until
// their batch leaves repair mode, pass maxUnsent in batches k-1 and k
// together: the destination flushes in the middle of batch k, with
// Off(k-1) and On(k+1) outstanding. Every connection is kept, its peer
// reads those bytes, then it works both ways. With a helper that fails at
// that flush, no descriptor is left and each connection works or is
// reset.
func TestMigrateLoadHostileUnsent(t *testing.T) {
	shortReplyTimeout(t, 300*time.Millisecond)
	const unsent = 12 << 10 // the new socket's send buffer takes it at once
	for _, act := range []helperAct{helperOK, helperDie, helperWrong, helperSilent} {
		t.Run("the helper "+act.String(), func(t *testing.T) {
			h, s, peers := moveSource(t, fourBatches)
			if fourBatches*unsent < 2*maxUnsent {
				t.Fatal("too few bytes never sent to flush in the middle of a batch")
			}
			want := map[tcpKey][]byte{}
			for i := range s.flows {
				m := &s.flows[i]
				key := m.tcp.key()
				if peers[key] == nil {
					continue
				}
				b := bytes.Repeat([]byte{byte(i), byte(i >> 8), 'u'}, unsent/3)
				m.sock.SendQ = append(m.sock.SendQ, b...)
				m.sock.NotSent += uint32(len(b))
				want[key] = b
			}
			stream := appendMigration(nil, s)
			d := hostileDestination(t, h)
			failed := false
			var lastOn int
			helper := startScriptedHelper(t, func(m helperMsg) helperAct {
				// The first Off of fewer sockets than a batch before the
				// last batch's On: the flush in the middle of a batch.
				if failed || m.cmd == tcprepair.Off && m.fds < tcprepair.MaxFds && m.onMsgs < 4 {
					failed = true
					return act
				}
				if m.cmd == tcprepair.On {
					lastOn = m.i
				}
				return helperOK
			})
			d.e.repair = helper.c
			before := openFds(t)
			if _, err := loadWithin(t, d, bytes.NewReader(stream)); err != nil {
				t.Fatalf("the load failed: %v", err)
			}
			helper.stop(t, d.e)
			if !failed {
				t.Fatalf("no flush in the middle of a batch: %s", helper.log())
			}
			o := checkLoad(t, d, peers, before, false, want)
			t.Logf("%d kept (%d in repair mode), %d reset; last On message %d; helper: %s", len(o.kept), len(o.hung), len(o.reset), lastOn, helper.log())
			if act == helperOK && (len(o.kept) != len(peers) || len(o.hung) > 0) {
				t.Errorf("%d of %d connections kept, %d in repair mode", len(o.kept), len(peers), len(o.hung))
			}
			if len(o.hung) > 0 {
				t.Errorf("%d connections kept with their sockets in repair mode", len(o.hung))
			}
		})
	}
}

// TestMigrateLoadHostileNoHelper: a destination with no helper resets
// every connection of a stream of several batches for the guest, once,
// keeps none, and leaves no descriptor behind.
func TestMigrateLoadHostileNoHelper(t *testing.T) {
	h, s, peers := moveSource(t, fourBatches)
	stream := appendMigration(nil, s)
	d := hostileDestination(t, h)
	before := openFds(t)
	if took, err := loadWithin(t, d, bytes.NewReader(stream)); err != nil || took > 5*time.Second {
		t.Fatalf("the load: %v, in %v", err, took)
	}
	o := checkLoad(t, d, peers, before, false, nil)
	if len(o.kept) > 0 || len(o.reset) != len(peers) {
		t.Errorf("%d connections kept, %d of %d reset", len(o.kept), len(o.reset), len(peers))
	}
	stillServes(t, d)
}

// TestMigrateLoadHostileOneSocketMessages: messages must not shrink for
// good. When the client only kept each message no larger than the one
// before (passt-repair's control length), a first batch with one
// connection not to restore split On(1) into 252 and 1 sockets, and
// every message after carried one: Off(k-1) and On(k+1) were then some
// 505 messages sent ahead of their answers, and a helper that, as
// upstream passt-repair, answers each with a blocking send stopped
// reading, while the engine polled for POLLOUT, which a unix socket
// reports only once its queue is down to a quarter of its send buffer.
// They waited on each other for the helper's whole time. Every message
// now carries MaxFds descriptors. Every connection to restore must be
// kept and work, in well under the helper's time.
func TestMigrateLoadHostileOneSocketMessages(t *testing.T) {
	for _, tc := range []struct {
		name      string
		closedOne bool // the stream's second flow is not to restore
		primed    bool // the helper had a message of one socket before
		sndbuf    int  // the helper's send buffer, if set
	}{
		{"a connection not to restore in the first batch", true, false, 0},
		{"after a message of one socket", false, true, 0},
		{"a helper with a small send buffer", false, true, 4096},
	} {
		t.Run(tc.name, func(t *testing.T) {
			shortReplyTimeout(t, 3*time.Second)
			h, s, peers := moveSource(t, fourBatches)
			var closed tcpKey
			if tc.closedOne {
				m := &s.flows[1]
				m.tcp.events |= evSockFinRcvd // not restored: reset for the guest
				closed = m.tcp.key()
			}
			stream := appendMigration(nil, s)
			d := hostileDestination(t, h)
			helper := goodHelper(t)
			d.e.repair = helper.c
			if tc.sndbuf > 0 {
				if err := unix.SetsockoptInt(helper.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, tc.sndbuf); err != nil {
					t.Fatal(err)
				}
			}
			if tc.primed {
				one, err := tcprepair.NewSocket(unix.AF_INET)
				if err != nil {
					t.Fatal(err)
				}
				err = helper.c.Set(tcprepair.On, []int{one})
				unix.Close(one)
				if err != nil {
					t.Fatal(err)
				}
			}
			before := openFds(t)
			took, err := loadWithin(t, d, bytes.NewReader(stream))
			if err != nil {
				t.Fatalf("the load failed: %v", err)
			}
			dropped := d.e.repair != helper.c
			helper.stop(t, d.e)
			helper.mu.Lock()
			ones, stall, gap := 0, 0, time.Duration(0)
			for i, m := range helper.msgs {
				if m.fds == 1 {
					ones++
				}
				if i > 0 && m.at.Sub(helper.msgs[i-1].at) > gap {
					stall, gap = i, m.at.Sub(helper.msgs[i-1].at)
				}
			}
			msgs := len(helper.msgs)
			helper.mu.Unlock()
			t.Logf("%d messages, %d of one socket, in %v; the helper waited %v before message %d", msgs, ones, took, gap, stall)
			if dropped || took > time.Second {
				t.Errorf("the helper was dropped (%v) after a load of %v: it and the engine waited on each other", dropped, took)
			}
			o := checkLoad(t, d, peers, before, false, nil)
			want := len(peers)
			if tc.closedOne {
				want--
				if o.kept[closed] {
					t.Errorf("%v, whose peer had closed, was restored", closed)
				}
			}
			if len(o.kept) != want || len(o.hung) > 0 {
				t.Errorf("%d of %d connections kept, %d in repair mode", len(o.kept), want, len(o.hung))
			}
		})
	}
}

// TestMigrateLoadHostileMSS: a stream's MSS, whatever it says, leaves a
// moved flow's segments within the destination's link, even one whose
// MTU is the least IPv4 allows (a segment of 28 bytes, under the 48 a
// guest may otherwise ask for at the least).
func TestMigrateLoadHostileMSS(t *testing.T) {
	for _, mss := range []uint32{0, 1, 1460, 0xffff} { // past 0xffff, refused (TestMigrationRefused)
		h, s, _ := moveSource(t, 1)
		h.e.cfg.MTU = MinMTU // the destination's
		for i := range s.flows {
			s.flows[i].tcp.tapMSS = mss
		}
		d := hostileDestination(t, h)
		d.e.repair = startRepairHelper(t)
		if _, err := loadWithin(t, d, bytes.NewReader(appendMigration(nil, s))); err != nil {
			t.Fatal(err)
		}
		link := MinMTU - header.IPv4MinLen - header.TCPMinLen
		d.e.tcp.each(func(_ int32, f *tcpFlow) {
			if f.mss > link || f.mss <= 0 {
				t.Errorf("a stream's MSS %d: the flow's %d, on a link that carries %d", mss, f.mss, link)
			}
		})
	}
}
