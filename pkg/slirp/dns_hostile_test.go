package slirp

import (
	"bytes"
	"log"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/pkg/slirp/header"
)

// TestDNSTraceQuotesName: with --trace each DNS query is logged with
// its name, which is the guest's bytes: a label may hold a newline, to
// forge log lines, or a terminal's escape sequences. The name is logged
// quoted, one line a query whatever it holds.
func TestDNSTraceQuotesName(t *testing.T) {
	pingNetns(t) // the query goes to the namespace's loopback, nowhere else
	te := newTestEngine(t)
	var logged bytes.Buffer
	te.cfg.NoUDP, te.cfg.Trace, te.cfg.Log = false, true, log.New(&logged, "", 0)
	name := "\nclient disconnected: forged\x1b[2J"
	q := []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, byte(len(name))}
	q = append(q, name...)
	q = append(q, 0, 0, 1, 0, 1)
	te.tapInput(frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(5353, dnsPort, q)))
	te.inputDone()
	var lines []string
	for _, l := range strings.Split(strings.TrimSuffix(logged.String(), "\n"), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "DNS query ") || strings.ContainsRune(lines[0], 0x1b) {
		t.Fatalf("logged %q, want one line for the query, its name quoted", logged.String())
	}
}
