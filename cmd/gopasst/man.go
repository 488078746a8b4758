package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/alecthomas/kong"
)

// The manual page, gopasst.1, is written from the same kong model as
// --help, so the two cannot disagree: "make gopasst.1" runs the hidden
// "gopasst man", and a test keeps the committed page current.

const manDescription = `gopasst gives a virtual machine a full network with no root, no tap device
and no CAP_NET_ADMIN, as passt does: it answers ARP, DHCP, NDP and DHCPv6
itself and translates the guest's TCP, UDP and ICMP echo to ordinary sockets
of the host, where the gateway address stands for the host's loopback. QEMU
connects with -netdev stream (or starts it with -netdev passt); libvirt runs
it as passt. Host ports forward to the guest with passt's -t and -u grammar.`

// writeMan writes the manual page of app in roff.
func writeMan(w io.Writer, app *kong.Application) {
	fmt.Fprintf(w, ".TH GOPASST 1 \"\" \"gopasst\" \"User Commands\"\n")
	fmt.Fprintf(w, ".SH NAME\ngopasst \\- %s\n", roff(strings.TrimSuffix(app.Help, ".")))
	fmt.Fprintf(w, ".SH SYNOPSIS\n")
	for _, cmd := range app.Children {
		if cmd.Hidden {
			continue
		}
		s := cmd.Summary()
		if cmd == app.DefaultCmd {
			s = strings.Replace(s, cmd.Name, "["+cmd.Name+"]", 1)
		}
		fmt.Fprintf(w, ".B gopasst %s\n.br\n", roff(s))
	}
	fmt.Fprintf(w, ".SH DESCRIPTION\n%s\n", roff(manDescription))
	fmt.Fprintf(w, ".SH OPTIONS\n")
	manFlags(w, app.Flags)
	fmt.Fprintf(w, ".SH COMMANDS\n")
	for _, cmd := range app.Children {
		if cmd.Hidden {
			continue
		}
		fmt.Fprintf(w, ".SS \"%s\"\n%s\n", roff(cmd.Summary()), roff(cmd.Help))
		for _, a := range cmd.Positional {
			fmt.Fprintf(w, ".TP\n.I %s\n%s\n", roff(a.Summary()), roff(a.Help))
		}
		manFlags(w, cmd.Flags)
	}
	fmt.Fprintf(w, ".SH SEE ALSO\n.BR passt (1),\n.BR qemu\\-system (1),\n.BR virsh (1)\n")
}

// manFlags lists flags, with their default where there is one.
func manFlags(w io.Writer, flags []*kong.Flag) {
	for _, f := range flags {
		if f.Hidden {
			continue
		}
		help := f.Help
		if f.HasDefault && f.Default != "" && f.Default != "-1" {
			help += " Default: " + f.Default + "."
		}
		fmt.Fprintf(w, ".TP\n.B %s\n%s\n", roff(f.String()), roff(help))
	}
}

// roff escapes text for a roff line: backslashes and hyphens, and a dot
// or quote that would start a request.
func roff(s string) string {
	s = strings.NewReplacer(`\`, `\e`, "-", `\-`).Replace(s)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}
