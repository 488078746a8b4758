package tests

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestBenchMigrate compares live migration over vhost-user on gopasst and
// on upstream passt, in the same run, on one host: TCG guests, both QEMUs
// and both back-ends in one network namespace, passt-repair serving
// both. For each it reports QMP's total migration time; how long the
// guest stood still, from the source's STOP event to the destination's
// RESUME; the network's blackout as the guest's peer sees it, the
// longest stall of a TCP stream the guest sends to a host server, and
// the part of it after the RESUME (the first read then: the guest
// sending again, which a TCG guest in a new QEMU does tens of ms later
// whatever the back-end does), and as the guest sees it, the most of its pings (one each 0.1 s of guest time,
// which stands still while the guest is stopped) lost in a row; and,
// with 1,000 established connections held besides, the stop again, whose
// growth over the first is the time the connections took to move, and
// how many of them echo a byte afterwards. It also reports the source
// back-end's CPU: per MB of the stream before, and during the migration,
// which competes with QEMU's copy of guest memory for the same two
// cores. Not pass/fail: it runs under make bench (GOPASST_BENCH=1) and
// logs its table.
//
// QEMU's downtime limit is set to benchDowntimeLimit for both back-ends.
// At QEMU's default of 300 ms the stop swung between about 30 and 300 ms
// with either back-end: QEMU switches over as soon as what is left to
// copy fits in the limit, so a stop took whatever guest memory the
// stream happened to dirty in the first pass (3 to 20 MB). The lower
// limit leaves under 2 MB to copy while the guest stands still, so the
// stop is mostly the back-ends' own work.
func TestBenchMigrate(t *testing.T) {
	needBench(t)
	qemu, kernel, kver := needQEMU(t)
	passt, err := passtPath()
	if err != nil {
		t.Skip(err)
	}
	repair := []string{filepath.Join(filepath.Dir(passt), "passt-repair")}
	if _, err := os.Stat(repair[0]); err != nil {
		t.Skipf("no passt-repair beside passt: %v", err)
	}
	rounds, _ := strconv.Atoi(os.Getenv("GOPASST_BENCH_MIGRATE_ROUNDS"))
	if rounds == 0 {
		rounds = 3
	}
	connhold := buildForGuest(t, t.TempDir(), "./cmd/connhold")
	backends := [][]string{
		{gopasstBin, "-f", "-s", "{sock}", "--vhost-user"},
		{passt, "-f", "-s", "{sock}", "--vhost-user"},
	}
	names := []string{"gopasst", "passt"}
	results := map[string]map[string][]float64{}
	for r := range rounds {
		// Each back-end goes first in every other round, so that neither
		// always follows the other's teardown.
		for _, i := range inTurn([]int{0, 1}, r) {
			argv := backends[i]
			if !benchSelected(names[i]) {
				continue
			}
			for _, flows := range []int{0, 1000} {
				t.Run(fmt.Sprintf("%s/%dflows/round%d", names[i], flows, r), func(t *testing.T) {
					if results[names[i]] == nil {
						results[names[i]] = map[string][]float64{}
					}
					for k, v := range benchMigrateOne(t, qemu, kernel, kver, connhold, repair, argv, flows) {
						results[names[i]][k] = append(results[names[i]][k], v)
					}
				})
			}
		}
	}
	for _, res := range results {
		// Each round's stop with the connections, less the median stop
		// without them.
		base := median(res["guest stopped, ms"])
		for _, v := range res["guest stopped with 1,000 connections, ms"] {
			res["time to move 1,000 connections, ms"] = append(res["time to move 1,000 connections, ms"], v-base)
		}
	}
	var b strings.Builder
	gv, _ := exec.Command(gopasstBin, "--version").Output()
	fmt.Fprintf(&b, "live migration, %d rounds, medians (range); QEMU %s, TCG, one vCPU, 256 MiB, downtime-limit %d ms, guest kernel %s; gopasst %s; passt %s; passt-repair for both\n\n",
		rounds, qemuVersion(qemu), benchDowntimeLimit, kver, strings.TrimSpace(string(gv)), passtVersion(passt))
	b.WriteString("| metric | gopasst | passt |\n|---|---|---|\n")
	for _, k := range []string{"total migration time, ms", "guest memory sent, MiB", "TCP stream before, MB/s",
		"source back-end's CPU for the stream before, ms/MB", "source back-end's CPU during the migration, ms", "guest stopped, ms", "TCP stream's longest stall, ms",
		"TCP stream's first read after RESUME, ms", "pings lost in a row", "total migration time with 1,000 connections, ms", "guest stopped with 1,000 connections, ms",
		"time to move 1,000 connections, ms", "source back-end's CPU during the migration with 1,000 connections, ms", "connections working after"} {
		fmt.Fprintf(&b, "| %s |", k)
		for _, n := range names {
			fmt.Fprintf(&b, " %s |", fmtFigure(median(results[n][k]), results[n][k]))
		}
		b.WriteString("\n")
	}
	t.Log("\n" + b.String())
}

// benchDowntimeLimit is QEMU's downtime-limit in the benchmark, in ms.
const benchDowntimeLimit = 30

// benchMigrateOne migrates one guest from argv to argv once, holding
// flows connections, and returns what it measured.
func benchMigrateOne(t *testing.T, qemu, kernel, kver, connhold string, repair, argv []string, flows int) map[string]float64 {
	w := newWorld(t, WorldOpts{NoGuest: true, Backend: append(slices.Clone(argv), "--migrate-exit", "--migrate-no-linger")})
	w.VhostUser = true
	dst := *w
	dst.Sock = filepath.Join(w.Dir, "dst.socket")
	_, dstLog := startBackend(t, w, dst.Sock, argv)
	startRepair(t, w, repair, w.Sock, w.Log)
	startRepair(t, w, repair, dst.Sock, dstLog)

	// The stream's sink notes when each read returned.
	sink := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	var mu sync.Mutex
	var reads []time.Time
	var got int // bytes
	go func() {
		c, err := sink.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			mu.Lock()
			reads = append(reads, time.Now())
			got += n
			mu.Unlock()
		}
	}()
	echo := w.Host.Listen(t, "tcp", "127.0.0.1:0") // for connhold's idle connections
	byteEcho(echo)
	const afterPort = "17777" // listened on once the guest has moved
	script := fmt.Sprintf(guestDHCPScript+`ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /etc/dhcp.sh
[ %[5]d -gt 0 ] && { connhold %[1]s:%[2]s %[5]d & hold=$!; }
ping -i 0.1 %[1]s > /tmp/ping 2>&1 &
ping=$!
{ yes gopasst | nc %[1]s %[3]s; echo "GOPASST-STREAMEND $?"; } &
echo GOPASST-READY
while [ "$(nc %[1]s %[4]s 2>/dev/null)" != "after migration" ]; do sleep 0.2; done
kill $ping
[ -n "$hold" ] && kill -USR1 $hold && wait $hold
echo "GOPASST-PINGS $(grep -c 'bytes from' /tmp/ping)"
echo "GOPASST-PINGLOST $(sed -n 's/.*seq=\([0-9]*\).*/\1/p' /tmp/ping | awk 'NR > 1 && $1 - p - 1 > m { m = $1 - p - 1 } { p = $1 } END { print m + 0 }')"
echo GOPASST-DONE
`, hostGW, port(echo.Addr()), port(sink.Addr()), afterPort, flows)
	q := startMigration(t, w, &dst, qemu, kernel, kver, script, map[string]string{"/bin/connhold": connhold}, 4*time.Minute, func() string { return "" })
	ctx, report, last := q.ctx, q.report, q.dst
	waitLong(t, "the guest's stream and connections", 3*time.Minute, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(report.get("READY")) > 0 && (flows == 0 || len(report.get("HELD")) > 0) && len(reads) > 0
	})
	time.Sleep(time.Second) // the stream runs steadily before
	pids := w.Pids()
	mu.Lock()
	before, cpu0 := got, procCPU(pids)
	mu.Unlock()
	time.Sleep(2 * time.Second)
	mu.Lock()
	mb, cpu := float64(got-before)/1e6, procCPU(pids)-cpu0
	mu.Unlock()
	src := dialQMP(t, q.srcQMP)
	src.call(t, "migrate-set-parameters", map[string]any{"downtime-limit": benchDowntimeLimit})
	src.c.Close() // migrateGuest has its own
	// The source exits once it has migrated: sample its processes' CPU
	// until then.
	seen := make([]float64, len(pids))
	for i, pid := range pids {
		seen[i] = procCPU([]int{pid})
	}
	first := slices.Clone(seen)
	done, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			for i, pid := range pids {
				seen[i] = max(seen[i], procCPU([]int{pid}))
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	started := time.Now()
	m := migrateGuest(ctx, t, q.srcQMP, q.dstQMP, q.incoming, w.Log)
	resumed := time.Now()
	close(done)
	<-sampled
	var migCPU float64
	for i := range seen {
		migCPU += seen[i] - first[i]
	}
	stall, back := -1.0, -1.0 // the stream never came back
	for ctx.Err() == nil && time.Since(resumed) < 30*time.Second {
		mu.Lock()
		if len(reads) > 0 && reads[len(reads)-1].After(resumed) {
			stall = 0
			for i := 1; i < len(reads); i++ {
				if reads[i].After(started) {
					stall = max(stall, float64(reads[i].Sub(reads[i-1]))/float64(time.Millisecond))
				}
				if back < 0 && reads[i].After(m.resume) {
					back = float64(reads[i].Sub(m.resume)) / float64(time.Millisecond)
				}
			}
		}
		mu.Unlock()
		if stall >= 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if stall < 0 {
		// Rare (docs/benchmarks.md): keep what each side knew. Only ss's
		// standard output: without a cgroup2 mount, it says so on its
		// standard error once for each of the thousand sockets.
		ss, _ := w.Host.Cmd("ss", "-tnie").Output()
		t.Logf("the stream did not come back; sockets:\n%s\nsource log:\n%s\ndestination log:\n%s", ss, w.Log.String(), dstLog.String())
	}
	after := w.Host.Listen(t, "tcp", "127.0.0.1:"+afterPort)
	acceptLoop(after, func(c net.Conn) { io.WriteString(c, "after migration\n"); c.Close() })
	last.Wait()
	if len(report.get("DONE")) == 0 {
		t.Fatalf("the guest did not finish; destination log:\n%s", dstLog.String())
	}
	num := func(k string) float64 {
		v, _ := strconv.ParseFloat(strings.TrimSpace(strings.Join(report.get(k), "")), 64)
		return v
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	res := map[string]float64{}
	if flows == 0 {
		res["guest memory sent, MiB"] = m.ramSent / (1 << 20)
		res["TCP stream before, MB/s"] = mb / 2
		res["source back-end's CPU for the stream before, ms/MB"] = cpu * 1e3 / mb
		res["total migration time, ms"] = ms(m.total)
		res["source back-end's CPU during the migration, ms"] = migCPU * 1e3
		res["guest stopped, ms"] = ms(m.stopped)
		res["TCP stream's longest stall, ms"] = stall
		res["TCP stream's first read after RESUME, ms"] = back
		res["pings lost in a row"] = num("PINGLOST")
	} else {
		res["total migration time with 1,000 connections, ms"] = ms(m.total)
		res["source back-end's CPU during the migration with 1,000 connections, ms"] = migCPU * 1e3
		res["guest stopped with 1,000 connections, ms"] = ms(m.stopped)
		res["connections working after"] = num("ALIVE")
		if lost := float64(flows) - num("ALIVE"); lost > 0 {
			// Rare, with either back-end, and not reproduced on its own
			// (docs/benchmarks.md): keep what the back-ends said.
			t.Logf("%.0f connections did not echo after the move; source log:\n%s\ndestination log:\n%s", lost, w.Log.String(), dstLog.String())
		}
	}
	if stall < 0 {
		t.Logf("QEMU consoles:\n%s", report.console())
	}
	t.Logf("%v (QMP downtime %v; %v pings answered; stall %.0f ms)", res, m.downtime, num("PINGS"), stall)
	return res
}
