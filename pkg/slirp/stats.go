package slirp

import (
	"fmt"
	"strings"
	"time"
)

// Event statistics, as passt's --stats prints them: how many epoll
// events of each kind the engine has handled since it started, logged at
// most every Config.Stats and only after a turn that had events, with
// the table's header every 20 lines.

// kindNames label the counts, by epoll kind (epoll.go).
var kindNames = [...]string{kindStop: "stop", kindListen: "accept", kindLink: "guest", kindTCP: "tcp",
	kindUDP: "udp", kindICMP: "icmp", kindTCPListen: "tcp_listen", kindUDPListen: "udp_listen", kindCall: "control",
	kindRepair: "repair_listen", kindSplice: "splice", kindSpliceListen: "splice_listen",
	kindSpliceUDP: "splice_udp", kindNeigh: "neighbour"}

// eventStats are the counts and when they were last logged.
type eventStats struct {
	counts [len(kindNames)]uint64
	logged time.Duration
	lines  int
}

// logStats logs the counts if Config.Stats has passed since the last
// time; n is the number of events of the turn just handled.
func (e *Engine) logStats(n int) {
	s := &e.evStats
	if e.cfg.Stats <= 0 || n == 0 || s.lines > 0 && e.now-s.logged < e.cfg.Stats {
		return
	}
	s.logged = e.now
	var b strings.Builder
	if s.lines%20 == 0 {
		for _, name := range kindNames[kindListen:] {
			fmt.Fprintf(&b, " %10s", name)
		}
		e.warnf("stats:%s", b.String()) // asked for: --quiet keeps it, as passt's
		b.Reset()
	}
	s.lines++
	for _, c := range s.counts[kindListen:] {
		fmt.Fprintf(&b, " %10d", c)
	}
	e.warnf("stats:%s", b.String())
}
