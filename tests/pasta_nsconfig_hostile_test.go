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

// The PID pasta serves exits during pasta's start, once pasta's agent is
// in its namespace (which the agent then keeps alive): whether pasta
// says it is ready or fails, it must not stay.
func TestPastaTargetExitsDuringStart(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	for i := range 5 {
		_, pid, _ := pidNetns(t, h, "unshare", "--net", "sh", "-c", "until ip link show tapx >/dev/null 2>&1; do :; done; exit 0;")
		out, err := h.Cmd(pastaLink(t), "--config-net", "-I", "tapx", "-t", "none", "-u", "none", "-T", "none", "-U", "none", pid).CombinedOutput()
		t.Logf("start %d: pasta: %v: %s", i, err, out)
		waitLong(t, "pasta to exit with the PID gone", 20*time.Second, func() bool { return len(mentioning(pid, pastaExe())) == 0 })
	}
}
