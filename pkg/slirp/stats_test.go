package slirp

import (
	"bytes"
	"log"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestStats: with Config.Stats, a turn with events logs the counts by
// kind under a header; a turn within the delay logs nothing.
func TestStats(t *testing.T) {
	te := newTestEngine(t)
	var out bytes.Buffer
	te.cfg.Log, te.cfg.Stats = log.New(&out, "", 0), time.Hour
	arp := seedFrames()[0]
	unix.Write(te.guest, append([]byte{0, 0, 0, byte(len(arp))}, arp...))
	if _, err := te.turn(1000); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "guest") || strings.Fields(lines[1])[2] != "1" {
		t.Fatalf("stats:\n%s", out.String())
	}
	unix.Write(te.guest, append([]byte{0, 0, 0, byte(len(arp))}, arp...))
	te.turn(1000)
	if n := strings.Count(out.String(), "\n"); n != 2 {
		t.Errorf("logged again within the delay:\n%s", out.String())
	}
}
