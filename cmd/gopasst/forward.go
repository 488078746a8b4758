package main

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp"
)

// Forwarding options shared by the command line and the control socket.

// ephemeralPorts is the host's ephemeral port range, which "all" skips,
// read once: the control socket asks again from inside the sandbox.
var ephemeralPorts = sync.OnceValues(readEphemeralPorts)

func readEphemeralPorts() (lo, hi uint16) {
	lo, hi = 32768, 60999
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return
	}
	f := strings.Fields(string(data))
	if len(f) == 2 {
		a, e1 := strconv.ParseUint(f[0], 10, 16)
		b, e2 := strconv.ParseUint(f[1], 10, 16)
		if e1 == nil && e2 == nil {
			lo, hi = uint16(a), uint16(b)
		}
	}
	return
}

// portSpecs parses every spec before anything is bound, so a bad spec
// leaves nothing half-applied.
func portSpecs(specs []string) ([]portspec.Spec, error) {
	var out []portspec.Spec
	for _, s := range specs {
		sp, err := portspec.Parse(s)
		if err != nil {
			return nil, err
		}
		out = append(out, sp)
	}
	return out, nil
}

// checkModes refuses what passt refuses across the repeats of one option,
// opt: "none" or "all" beside anything else, "all" in pasta mode, "auto"
// outside it, and an address or interface for the namespace's side (-T,
// -U), which always binds its loopback. Unlike pasta, gopasst takes auto
// beside ports, to forward some of them to other ports.
func checkModes(opt string, specs []string, pasta, nsSide bool) error {
	for _, s := range specs {
		switch {
		case (s == "none" || s == "all") && len(specs) > 1, s == "auto" && slices.Contains(specs, "none"):
			return fmt.Errorf("%s %s: conflicts with the option's other forwards", opt, s)
		case s == "all" && pasta:
			return fmt.Errorf("%s all: only in passt mode", opt)
		case s == "auto" && !pasta:
			return fmt.Errorf("%s auto: only in pasta mode", opt)
		case nsSide && strings.Contains(s, "/"):
			return fmt.Errorf("%s %s: no address or interface on the namespace's side", opt, s)
		}
	}
	return nil
}

// forwardsOff refuses a forward that options turned off, as passt does,
// since nothing could carry it to the guest: one of a protocol --no-tcp
// or --no-udp disabled (no host side connection is accepted then), or
// bound to an address of the family -4 or -6 disabled.
func forwardsOff(o *NetOptions) error {
	for _, p := range []struct {
		off   bool
		name  string
		specs []string
	}{{o.NoTCP, "TCP", o.TCPPorts}, {o.NoUDP, "UDP", o.UDPPorts}} {
		for _, s := range p.specs {
			if p.off && s != "none" {
				return fmt.Errorf("%s: %s forwarding requested, but %s is disabled", s, p.name, p.name)
			}
			sp, err := portspec.Parse(s)
			if err == nil && (o.IPv4 && sp.Addr.Is6() || o.IPv6 && sp.Addr.Is4()) {
				return fmt.Errorf("%s: the forward's address family is disabled (-4, -6)", s)
			}
		}
	}
	return nil
}

// expanded is one spec's forwards; a wide one ("all", or exclusions
// only) skips ports that are ephemeral or already bound, as passt does.
type expanded struct {
	fwds []portspec.Forward
	wide bool
}

// expandSpecs expands specs into the forwards they bind, the same in the
// engine (applySpecs) and in the helper, which binds only those.
func expandSpecs(specs []string) ([]expanded, error) {
	parsed, err := portSpecs(specs)
	if err != nil {
		return nil, err
	}
	lo, hi := ephemeralPorts()
	skip := func(p uint16) bool { return p >= lo && p <= hi }
	var out []expanded
	for _, sp := range parsed {
		out = append(out, expanded{sp.Forwards(skip), sp.All || len(sp.Include) == 0})
	}
	return out, nil
}

// applySpecs adds or removes the forwards of specs. Adding is all or
// nothing across the specs.
func applySpecs(eng *slirp.Engine, proto slirp.Proto, specs []string, add bool) error {
	exp, err := expandSpecs(specs)
	if err != nil {
		return err
	}
	var done [][]portspec.Forward
	for _, e := range exp {
		if add {
			err = eng.AddForwards(proto, e.fwds, e.wide)
		} else {
			err = eng.RemoveForwards(proto, e.fwds)
		}
		if err != nil {
			if add {
				for _, f := range done {
					eng.RemoveForwards(proto, f)
				}
			}
			return err
		}
		done = append(done, e.fwds)
	}
	return nil
}

// specialPorts are the gateway ports of req's unix and command forwards,
// for "remove": only the port counts.
func specialPorts(req *ctlRequest) ([]uint16, error) {
	var ports []uint16
	for _, s := range append(append([]string{}, req.UnixFwd...), req.CmdFwd...) {
		p, _, _ := strings.Cut(s, ":")
		port, err := parseGatewayPort(p)
		if err != nil {
			return nil, err
		}
		ports = append(ports, port)
	}
	return ports, nil
}

// parseSpecial splits "PORT:REST" for --unix-fwd and --cmd-fwd; what
// names REST in the error.
func parseSpecial(opt, what, s string) (uint16, string, error) {
	p, rest, _ := strings.Cut(s, ":")
	port, err := parseGatewayPort(p)
	if err != nil || rest == "" {
		return 0, "", fmt.Errorf("%s: %q is not PORT:%s", opt, s, what)
	}
	return port, rest, nil
}

func parseGatewayPort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a port", s)
	}
	return uint16(n), nil
}

// splitCommand splits a command line into words with sh-like quoting
// ('...', "...", backslash) and nothing else: no expansion, no shell.
// Whoever wants a shell writes one: sh -c '...'.
func splitCommand(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	escaped := false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\' && quote != '\'':
			escaped, inWord = true, true
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 || escaped {
		return nil, errors.New("unterminated quote or escape")
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// addSpecials applies --unix-fwd and --cmd-fwd options, all or nothing.
// The engine keeps only the ports and what to list: the helper has
// checked them, and knows where each port leads.
func addSpecials(eng *slirp.Engine, unixFwd, cmdFwd []string) error {
	var added []uint16
	err := func() error {
		for _, s := range unixFwd {
			port, path, err := parseSpecial("--unix-fwd", "PATH", s)
			if err != nil {
				return err
			}
			if err := eng.AddUnixForward(port, path); err != nil {
				return fmt.Errorf("--unix-fwd %s: %w", s, err)
			}
			added = append(added, port)
		}
		for _, s := range cmdFwd {
			port, cmd, err := parseSpecial("--cmd-fwd", "COMMAND", s)
			if err != nil {
				return err
			}
			if err := eng.AddCmdForward(port, cmd); err != nil {
				return fmt.Errorf("--cmd-fwd %s: %w", s, err)
			}
			added = append(added, port)
		}
		return nil
	}()
	if err != nil {
		for _, port := range added {
			eng.RemoveSpecial(port)
		}
	}
	return err
}

// addForwards applies a whole set of forwards or, on error, none of it:
// the command line's at start-up and the control socket's "add".
func addForwards(eng *slirp.Engine, req *ctlRequest) error {
	if err := applySpecs(eng, slirp.TCP, req.TCP, true); err != nil {
		return err
	}
	if err := applySpecs(eng, slirp.UDP, req.UDP, true); err != nil {
		applySpecs(eng, slirp.TCP, req.TCP, false)
		return err
	}
	if err := addSpecials(eng, req.UnixFwd, req.CmdFwd); err != nil {
		applySpecs(eng, slirp.TCP, req.TCP, false)
		applySpecs(eng, slirp.UDP, req.UDP, false)
		return err
	}
	return nil
}
