package tests

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The host's neighbours as the guest sees them, gopasst beside upstream
// passt 2026.03: both mirror the host's ARP and NDP tables on the
// template interface. The host's link (uplink's veth peer) is moved into
// a namespace of its own, a LAN host at .50 with a UDP echo and a TCP
// listener; other entries (.70, .71) are entries alone.

const (
	lanMAC  = "02:00:00:00:00:50" // the LAN host's, and the host's entry for it
	lanMAC2 = "02:00:00:00:00:5a" // the LAN host's after it changes
)

var (
	lan4 = netip.MustParseAddr("198.51.100.50")
	lan6 = netip.MustParseAddr("2001:db8:1::50")
	ent4 = netip.MustParseAddr("198.51.100.70") // an entry, no host
	new4 = netip.MustParseAddr("198.51.100.71") // an entry added while the guest is there
	new6 = netip.MustParseAddr("2001:db8:1::71")
)

// neighHost is diffHost with the LAN host, whose namespace it returns,
// and the entries.
func neighHost(t *testing.T, h *Netns) *Netns {
	diffHost(t, h)
	lan := newNetns(t, "gpl")
	h.Run(t, "ip", "link", "set", "uplink-peer", "address", lanMAC)
	h.Run(t, "ip", "link", "set", "uplink-peer", "netns", lan.Name)
	lan.Run(t, "ip", "link", "set", "uplink-peer", "up")
	lan.Run(t, "ip", "addr", "add", lan4.String()+"/24", "dev", "uplink-peer")
	lan.Run(t, "ip", "-6", "addr", "add", lan6.String()+"/64", "dev", "uplink-peer", "nodad")
	echoPackets(lan.ListenPacket(t, "udp", ":7"), "")
	lan.Listen(t, "tcp", ":8")
	// Known from the start, so that nothing waits for resolution and
	// no flow races the kernel's first answer.
	for _, e := range [][2]string{{lan4.String(), lanMAC}, {lan6.String(), lanMAC}, {ent4.String(), "02:00:00:00:00:70"}} {
		h.Run(t, "ip", "neigh", "replace", e[0], "lladdr", e[1], "dev", "uplink", "nud", "permanent")
	}
	return lan
}

// neighStep is one step: what the host (w.Host) does, then the frames
// the guest sends.
type neighStep struct {
	name   string
	host   func(t *testing.T, w *World, lan *Netns)
	frames [][]byte
}

func neighUDP(src, dst netip.Addr, sport, dport uint16) []byte {
	return guestFrame(ourMAC, udpPacket(src, sport, dst, dport, []byte("neigh")))
}

// tcpRst is a reset with sequence number seq.
func tcpRst(sport, dport uint16, seq uint32) []byte {
	b := tcpSyn(sport, dport)
	binary.BigEndian.PutUint32(b[4:], seq)
	b[13] = 0x04
	return b
}

func neighSteps() []neighStep {
	host6 := netip.MustParseAddr(host6Addr)
	gw6 := netip.MustParseAddr(host6GW)
	arp := func(a netip.Addr) [][]byte { return [][]byte{arpFrame(1, testMAC, guestIP4, a)} }
	ns := func(a netip.Addr) [][]byte { return [][]byte{icmp6Frame(host6, a, ourMAC, nsMsg(a))} }
	return []neighStep{
		{name: "arp-lan", frames: arp(lan4)},
		{name: "arp-entry", frames: arp(ent4)},
		{name: "arp-gw", frames: arp(gw4)},
		{name: "arp-none", frames: arp(netip.MustParseAddr("198.51.100.60"))},
		{name: "ns-lan", frames: ns(lan6)},
		{name: "ns-gw", frames: ns(gw6)},
		{name: "ns-none", frames: ns(netip.MustParseAddr("2001:db8:1::60"))},
		{name: "udp4-lan", frames: [][]byte{neighUDP(guestIP4, lan4, 40020, 7)}},
		{name: "udp6-lan", frames: [][]byte{neighUDP(host6, lan6, 40021, 7)}},
		{name: "tcp4-lan", frames: [][]byte{guestFrame(ourMAC, ipPacket(guestIP4, lan4, 6, 64, tcpSyn(40022, 8), 16))}},
		{name: "tcp4-lan-reset", frames: [][]byte{guestFrame(ourMAC, ipPacket(guestIP4, lan4, 6, 64, tcpRst(40022, 8, 2), 16))}},
		{name: "udp4-lan-closed", frames: [][]byte{neighUDP(guestIP4, lan4, 40023, 9)}},
		// The LAN host's MAC changes, and the host's entry with it: a
		// flow keeps the MAC it started with, a new one takes the new.
		{name: "lan-changes", host: func(t *testing.T, w *World, lan *Netns) {
			lan.Run(t, "ip", "link", "set", "uplink-peer", "address", lanMAC2)
			w.Host.Run(t, "ip", "neigh", "replace", lan4.String(), "lladdr", lanMAC2, "dev", "uplink", "nud", "permanent")
		}},
		{name: "arp-lan-changed", frames: arp(lan4)},
		{name: "udp4-lan-same-flow", frames: [][]byte{neighUDP(guestIP4, lan4, 40020, 7)}},
		{name: "udp4-lan-new-flow", frames: [][]byte{neighUDP(guestIP4, lan4, 40024, 7)}},
		// A change of an entry is silent; a new entry is announced; a
		// deleted one falls back to the gateway's.
		{name: "entry-changes", host: func(t *testing.T, w *World, _ *Netns) {
			w.Host.Run(t, "ip", "neigh", "replace", ent4.String(), "lladdr", "02:00:00:00:00:7a", "dev", "uplink", "nud", "permanent")
		}},
		{name: "arp-entry-changed", frames: arp(ent4)},
		{name: "entries-added", host: func(t *testing.T, w *World, _ *Netns) {
			w.Host.Run(t, "ip", "neigh", "replace", new4.String(), "lladdr", "02:00:00:00:00:71", "dev", "uplink", "nud", "reachable")
			w.Host.Run(t, "ip", "neigh", "replace", new6.String(), "lladdr", "02:00:00:00:00:71", "dev", "uplink", "nud", "reachable")
		}},
		{name: "arp-entry-added", frames: arp(new4)},
		{name: "entry-deleted", host: func(t *testing.T, w *World, _ *Netns) {
			w.Host.Run(t, "ip", "neigh", "del", ent4.String(), "dev", "uplink")
		}},
		{name: "arp-entry-deleted", frames: arp(ent4)},
	}
}

// runNeighSteps starts one backend on argv in a world with neighHost,
// runs steps, and returns, by step, the frames it sent the guest,
// decoded, and the backend's log.
func runNeighSteps(t *testing.T, argv []string, steps []neighStep) (map[string][]string, string) {
	var lan *Netns
	w := newWorld(t, WorldOpts{NoGuest: true, Backend: argv, BeforeStart: func(h *Netns) { lan = neighHost(t, h) }})
	c, frames := attachGuest(t, w)
	gather := func(d time.Duration) [][]byte {
		out, open := gatherFrames(frames, d)
		if !open {
			t.Errorf("%s hung up:\n%s", argv[0], w.Log.String())
		}
		return out
	}
	gather(300 * time.Millisecond) // what comes on connect
	res := map[string][]string{}
	st := &probeState{}
	for _, s := range steps {
		if s.host != nil {
			s.host(t, w, lan)
		}
		for _, f := range s.frames {
			c.Write(frame(f))
		}
		for _, f := range gather(300 * time.Millisecond) {
			// Not the backend asking for the guest's MAC, nor its periodic
			// RA, which a loaded machine may send late; its announcements
			// (ARP requests too) are what the steps look for.
			if line := decodeFrame(f, st); !neighNoise.MatchString(line) {
				res[s.name] = append(res[s.name], line)
			}
		}
	}
	return res, w.Log.String()
}

// neighNoise matches the frames runNeighSteps leaves out.
var neighNoise = regexp.MustCompile(`>guest ARP op=1|type=135 |>ff02::1 ICMP type=134 `)

// unsolicitedNA takes passt's unsolicited Neighbor Advertisements as
// gopasst sends them: passt 2026.03 sets their solicited flag, for which
// a guest drops an advertisement to a multicast address (RFC 4861 7.1.2;
// Linux does), so that its announcements of IPv6 neighbours reach none.
func unsolicitedNA(lines []string) []string {
	out := slices.Clone(lines)
	for i, l := range out {
		out[i] = strings.Replace(l, ">ff02::1 ICMP type=136 code=0 NA flags=0xe0 ", ">ff02::1 ICMP type=136 code=0 NA flags=0xa0 ", 1)
	}
	return out
}

// multicastDst takes gopasst's multicast frames as passt sends them: to
// the guest's own MAC, where gopasst sends to the group's (RFC 2464 7).
func multicastDst(lines []string) []string {
	out := slices.Clone(lines)
	for i, l := range out {
		out[i] = strings.Replace(l, ">33:33:00:00:00:01 ", ">guest ", 1)
	}
	return out
}

// TestDiffNeighbours runs neighSteps through gopasst and upstream passt,
// by default and with --no-map-gw, and fails where their answers differ
// (past the harmless differences and unsolicitedNA's) or where
// gopasst's lack the MAC each step is about.
func TestDiffNeighbours(t *testing.T) {
	passt := upstreamPasst(t)
	for _, c := range []struct {
		name string
		args []string
		gw   string // the MAC the gateway, and what has no entry, is at
	}{{"default", nil, "ours"}, {"no-map-gw", []string{"--no-map-gw"}, "02:00:00:00:00:01"}} {
		t.Run(c.name, func(t *testing.T) {
			var up, gp map[string][]string
			t.Run("run", func(t *testing.T) {
				t.Run("passt", func(t *testing.T) {
					t.Parallel()
					up, _ = runNeighSteps(t, append([]string{passt, "-f", "-s", "{sock}"}, c.args...), neighSteps())
				})
				t.Run("gopasst", func(t *testing.T) {
					t.Parallel()
					gp, _ = runNeighSteps(t, append([]string{gopasstBin, "-f", "-s", "{sock}"}, c.args...), neighSteps())
				})
			})
			if up == nil || gp == nil {
				return
			}
			for _, s := range neighSteps() {
				a, b := normalize(unsolicitedNA(up[s.name])), normalize(multicastDst(gp[s.name]))
				if !slices.Equal(a, b) {
					t.Errorf("%s differs:\n  passt:   %s\n  gopasst: %s", s.name, strings.Join(a, "\n\t   "), strings.Join(b, "\n\t   "))
				}
			}
			for step, want := range map[string]string{
				"arp-lan":            "ARP op=2 sha=" + lanMAC,
				"arp-entry":          "ARP op=2 sha=02:00:00:00:00:70",
				"arp-gw":             "ARP op=2 sha=" + c.gw,
				"arp-none":           "ARP op=2 sha=" + c.gw,
				"ns-lan":             "ll2=" + lanMAC,
				"ns-gw":              "ll2=" + c.gw,
				"udp4-lan":           lanMAC + ">guest IPv4 198.51.100.50>198.51.100.2 UDP 7>40020",
				"udp6-lan":           lanMAC + ">guest IPv6 2001:db8:1::50>2001:db8:1::2 UDP 7>40021",
				"tcp4-lan":           lanMAC + ">guest IPv4 198.51.100.50>198.51.100.2 TCP 8>40022 flags=0x12",
				"udp4-lan-closed":    lanMAC + ">guest IPv4 198.51.100.50>198.51.100.2 ICMP type=3 code=3",
				"arp-lan-changed":    "ARP op=2 sha=" + lanMAC2,
				"udp4-lan-same-flow": lanMAC + ">guest IPv4 198.51.100.50>198.51.100.2 UDP 7>40020",
				"udp4-lan-new-flow":  lanMAC2 + ">guest IPv4 198.51.100.50>198.51.100.2 UDP 7>40024",
				"arp-entry-changed":  "ARP op=2 sha=02:00:00:00:00:7a",
				"entries-added":      "02:00:00:00:00:71>bcast ARP op=1 sha=02:00:00:00:00:71 sip=198.51.100.71 tha=00:00:00:00:00:00 tip=198.51.100.71",
				"arp-entry-added":    "ARP op=2 sha=02:00:00:00:00:71",
				"arp-entry-deleted":  "ARP op=2 sha=" + c.gw,
			} {
				if !slices.ContainsFunc(gp[step], func(l string) bool { return strings.Contains(l, want) }) {
					t.Errorf("gopasst's %s: %q, without %q", step, gp[step], want)
				}
			}
			if !slices.ContainsFunc(gp["entries-added"], func(l string) bool {
				return strings.Contains(l, ">ff02::1 ICMP type=136 code=0 NA flags=0xa0 target=2001:db8:1::71 ll2=02:00:00:00:00:71")
			}) {
				t.Errorf("gopasst's entries-added: %q, without the unsolicited NA", gp["entries-added"])
			}
			for _, step := range []string{"lan-changes", "entry-changes", "entry-deleted"} {
				if len(gp[step]) > 0 {
					t.Errorf("gopasst sent on %s: %q", step, gp[step])
				}
			}
		})
	}
}

// TestNeighboursOverrun: the host's table changes while gopasst is
// stopped, far more than its socket holds (by net.core.rmem_default), so that changes are lost
// (ENOBUFS); once it runs again, the sandboxed engine dumps the table
// again, and the guest's answers are the table as it is: an entry
// deleted meanwhile gone, one added there.
func TestNeighboursOverrun(t *testing.T) {
	needRoot(t)
	arp := func(a netip.Addr) [][]byte { return [][]byte{arpFrame(1, testMAC, guestIP4, a)} }
	churn := func(t *testing.T, w *World, _ *Netns) {
		pids := w.Pids()
		for _, p := range pids {
			unix.Kill(p, unix.SIGSTOP)
		}
		// Each change costs the socket's buffer more than 256 bytes.
		rounds := 10
		if b, err := os.ReadFile("/proc/sys/net/core/rmem_default"); err == nil {
			n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			rounds = max(rounds, n/256/100+1)
		}
		var cmds strings.Builder
		for round := range rounds {
			for i := range 100 {
				fmt.Fprintf(&cmds, "neigh replace 198.51.100.%d lladdr 02:00:00:%02x:%02x:%02x dev uplink nud permanent\n", i+100, round>>8, round&0xff, i)
			}
		}
		fmt.Fprintf(&cmds, "neigh del %v dev uplink\nneigh replace %v lladdr 02:00:00:00:00:71 dev uplink nud permanent\n", ent4, new4)
		ip := w.Host.Cmd("ip", "-batch", "-")
		ip.Stdin = strings.NewReader(cmds.String())
		if out, err := ip.CombinedOutput(); err != nil {
			t.Errorf("ip -batch: %v\n%s", err, out)
		}
		for _, p := range pids {
			unix.Kill(p, unix.SIGCONT)
		}
		time.Sleep(time.Second) // the engine's next ticks: not what passes or fails
	}
	res, log := runNeighSteps(t, []string{gopasstBin, "-f", "-s", "{sock}"}, []neighStep{
		{name: "churn", host: churn},
		{name: "arp-deleted", frames: arp(ent4)},
		{name: "arp-added", frames: arp(new4)},
	})
	if !strings.Contains(log, "no buffer space available") {
		t.Errorf("no change was lost; the log:\n%s", log)
	}
	for step, want := range map[string]string{"arp-deleted": "ARP op=2 sha=ours", "arp-added": "ARP op=2 sha=02:00:00:00:00:71"} {
		if !slices.ContainsFunc(res[step], func(l string) bool { return strings.Contains(l, want) }) {
			t.Errorf("%s: %q, without %q", step, res[step], want)
		}
	}
}

// TestDiffNeighboursPasta: in pasta mode, the namespace's kernel learns
// the MACs gopasst and upstream pasta give it for the LAN host, an entry
// alone, the gateway and an address without an entry, by default and
// with --no-map-gw, after a datagram to each (the LAN host echoes it).
func TestDiffNeighboursPasta(t *testing.T) {
	needRoot(t)
	upstream := upstreamPasta(t)
	targets := []string{lan4.String(), lan6.String(), ent4.String(), hostGW, "198.51.100.60", host6GW}
	for _, c := range []struct {
		name string
		args []string
	}{{"default", nil}, {"no-map-gw", []string{"--no-map-gw"}}} {
		t.Run(c.name, func(t *testing.T) {
			var got [2][]string
			for i, bin := range []string{upstream, pastaLink(t)} {
				host := newHost(t, WorldOpts{})
				neighHost(t, host)
				ns := newNetns(t, "gpn")
				argv := []string{"-f", "--config-net", "--netns", "/run/netns/" + ns.Name, "-t", "none", "-u", "none", "-T", "none", "-U", "none"}
				if i == 0 {
					argv = append(argv, "--runas", "0")
				}
				got[i] = runFwdThen(t, host.Cmd(bin, append(argv, c.args...)...), func() []string {
					// A datagram to each address has the namespace
					// resolve it; the LAN host's come back.
					for _, a := range targets[2:] {
						if c, err := ns.Dial("udp", net.JoinHostPort(a, "9"), time.Second); err == nil {
							c.Write([]byte("hi"))
							c.Close()
						}
					}
					out := []string{"echo " + fwdAnswer(ns, "udp", net.JoinHostPort(lan4.String(), "7")),
						"echo6 " + fwdAnswer(ns, "udp", net.JoinHostPort(lan6.String(), "7"))}
					time.Sleep(500 * time.Millisecond)
					for _, a := range targets {
						out = append(out, a+" "+nsNeigh(ns, a))
					}
					return out
				})
			}
			t.Logf("upstream pasta: %q", got[0])
			t.Logf("gopasst:        %q", got[1])
			if !slices.Equal(got[0], got[1]) {
				t.Errorf("the namespace's neighbours differ:\n  pasta:   %q\n  gopasst: %q", got[0], got[1])
			}
			for _, want := range []string{"echo hi", "echo6 hi", lan4.String() + " " + lanMAC, lan6.String() + " " + lanMAC} {
				if !slices.Contains(got[1], want) {
					t.Errorf("gopasst: %q, without %q", got[1], want)
				}
			}
		})
	}
}

// nsNeigh is the MAC ns's neighbour table has for a, or its state.
func nsNeigh(ns *Netns, a string) string {
	out, _ := ns.Cmd("ip", "neigh", "show", a).Output()
	f := strings.Fields(string(out))
	if i := slices.Index(f, "lladdr"); i >= 0 && i+1 < len(f) {
		return f[i+1]
	}
	return strings.Join(f, " ")
}
