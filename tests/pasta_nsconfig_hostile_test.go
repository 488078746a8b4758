package tests

import (
	"testing"
	"time"
)

// A hostile namespace has CAP_NET_ADMIN over its own network: it deletes
// the tap pasta serves. pasta then exits, as upstream's does ("Disconnect
// event on /dev/net/tun device"), and lets go of its host ports, rather
// than staying with no guest to serve.
func TestPastaTapDeleted(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	ns, pid, _ := pidNetns(t, h)
	if out, err := h.Cmd(pastaLink(t), "--config-net", "-I", "tapx", "-t", "18401", "-u", "none", "-T", "none", "-U", "none", pid).CombinedOutput(); err != nil {
		t.Fatalf("pasta: %v: %s", err, out)
	}
	ns.Run(t, "ip", "link", "del", "tapx")
	waitLong(t, "pasta to exit once its tap is gone", 20*time.Second, func() bool { return len(mentioning(pid, pastaExe())) == 0 })
}
