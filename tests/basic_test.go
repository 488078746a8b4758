package tests

import (
	"strings"
	"testing"
)

func TestDHCPLease(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"-H", "guest1", "--fqdn", "guest1.example.test"}})
	want := map[string]string{
		"ip": hostAddr, "mask": hostPrefix, "subnet": "255.255.255.0",
		"router": hostGW, "dns": hostGW, "mtu": "65520",
		"domain": "example.test", "search": "example.test lab.example",
		"hostname": "guest1", "serverid": hostGW,
	}
	for k, v := range want {
		if got := w.Lease[k]; got != v {
			t.Errorf("lease %s = %q, want %q", k, got, v)
		}
	}
	// busybox shows option 81 (FQDN) raw: flags, two rcodes, wire name.
	if !strings.Contains(w.Lease["opt81"], "06677565737431076578616d706c6504746573740"+"0") {
		t.Errorf("FQDN option = %q", w.Lease["opt81"])
	}
	if w.Lease["lease"] == "" {
		t.Error("no lease time")
	}
	out := w.Guest.Run(t, "ip", "-4", "addr", "show", tapName)
	if !strings.Contains(out, hostAddr+"/"+hostPrefix) || !strings.Contains(out, "mtu 65520") {
		t.Errorf("guest interface not configured from the lease:\n%s", out)
	}
	t.Logf("lease: %v", w.Lease)
}

func TestPingGateway(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	out := w.Guest.Run(t, "busybox", "ping", "-c", "3", "-W", "5", hostGW)
	if !strings.Contains(out, "3 packets received") {
		t.Fatalf("ping: %s", out)
	}
}
