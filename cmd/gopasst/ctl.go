package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// The control socket (--control PATH) changes forwards at runtime, as
// libvdeslirp's add_fwd/remove_fwd, add_unixfwd and add_cmdexec do. The
// protocol is one JSON object per line, one request per connection:
//
//	→ {"op":"add","tcp":["8080:80"],"udp":[],"unix_fwd":["6000:/tmp/.X11-unix/X0"],"cmd_fwd":["7000:cat"]}
//	← {"ok":true}
//	→ {"op":"list"}
//	← {"ok":true,"forwards":["tcp 8080 -> guest port 80", ...]}
//
// "remove" takes the same fields; for unix_fwd and cmd_fwd only the port
// matters. Errors come back as {"ok":false,"error":"..."} and change
// nothing. The socket is created with mode 0600: only its owner may use it.

type ctlRequest struct {
	Op      string   `json:"op"`
	TCP     []string `json:"tcp,omitempty"`
	UDP     []string `json:"udp,omitempty"`
	UnixFwd []string `json:"unix_fwd,omitempty"`
	CmdFwd  []string `json:"cmd_fwd,omitempty"`
}

type ctlResponse struct {
	OK       bool     `json:"ok"`
	Error    string   `json:"error,omitempty"`
	Forwards []string `json:"forwards,omitempty"`
}

// listenControl opens the control socket; serveControl answers on it.
func listenControl(path string) (*net.UnixListener, error) {
	if err := qemusock.RemoveStale(path); err != nil {
		return nil, fmt.Errorf("--control: %v", err)
	}
	old := unix.Umask(0o177)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("--control: %v", err)
	}
	return l, nil
}

// serveControl handles one request at a time; each is carried out on the
// engine's goroutine through Engine.Call.
func serveControl(l *net.UnixListener, eng *slirp.Engine) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var req ctlRequest
		var resp ctlResponse
		line, err := bufio.NewReader(io.LimitReader(c, 1<<20)).ReadBytes('\n')
		if err == nil || (err == io.EOF && len(line) > 0) {
			err = json.Unmarshal(line, &req)
		}
		if err != nil {
			resp.Error = "bad request: " + err.Error()
		} else {
			eng.Call(func() { resp = handleControl(eng, &req) })
		}
		json.NewEncoder(c).Encode(resp)
		c.Close()
	}
}

func handleControl(eng *slirp.Engine, req *ctlRequest) ctlResponse {
	var err error
	switch req.Op {
	case "list":
		return ctlResponse{OK: true, Forwards: eng.Forwards()}
	case "add":
		err = addForwards(eng, req)
	case "remove":
		err = ctlRemove(eng, req)
	default:
		err = fmt.Errorf("unknown op %q (want list, add or remove)", req.Op)
	}
	if err != nil {
		return ctlResponse{Error: err.Error()}
	}
	return ctlResponse{OK: true}
}

func ctlRemove(eng *slirp.Engine, req *ctlRequest) error {
	if err := applySpecs(eng, slirp.TCP, req.TCP, false); err != nil {
		return err
	}
	if err := applySpecs(eng, slirp.UDP, req.UDP, false); err != nil {
		return err
	}
	for _, s := range append(req.UnixFwd, req.CmdFwd...) {
		p, _, _ := strings.Cut(s, ":") // only the port counts
		port, err := parseGatewayPort(p)
		if err != nil {
			return err
		}
		if err := eng.RemoveSpecial(port); err != nil {
			return err
		}
	}
	return nil
}

// CtlOptions is the client: gopasst ctl PATH list|add|remove [options].
type CtlOptions struct {
	Path    string   `arg:"" help:"Control socket (gopasst --control PATH)."`
	Op      string   `arg:"" enum:"list,add,remove" help:"list, add or remove."`
	TCP     []string `short:"t" name:"tcp-ports" sep:"none" placeholder:"SPEC" help:"TCP forward, passt's grammar."`
	UDP     []string `short:"u" name:"udp-ports" sep:"none" placeholder:"SPEC" help:"UDP forward, passt's grammar."`
	UnixFwd []string `name:"unix-fwd" sep:"none" placeholder:"PORT:PATH" help:"Gateway port to a host unix socket."`
	CmdFwd  []string `name:"cmd-fwd" sep:"none" placeholder:"PORT:COMMAND" help:"Gateway port to a command's stdin/stdout."`
}

func runCtl(o *CtlOptions, stdout, stderr io.Writer) int {
	req := ctlRequest{Op: o.Op, TCP: o.TCP, UDP: o.UDP, UnixFwd: o.UnixFwd, CmdFwd: o.CmdFwd}
	resp, err := ctlCall(o.Path, &req)
	if err != nil {
		return fail(stderr, "ctl: %v", err)
	}
	if !resp.OK {
		return fail(stderr, "ctl: %s", resp.Error)
	}
	for _, f := range resp.Forwards {
		fmt.Fprintln(stdout, f)
	}
	return 0
}

func ctlCall(path string, req *ctlRequest) (*ctlResponse, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return nil, err
	}
	var resp ctlResponse
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return nil, errors.New("no answer from gopasst: " + err.Error())
	}
	return &resp, nil
}
