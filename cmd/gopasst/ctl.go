package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
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
// The helper serves it (ctlRelay), and the engine carries requests out.

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
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: qemusock.FileName(path), Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("--control: %v", err)
	}
	return l, nil
}

// ctlRelay is the helper's side of the control socket. The helper reads
// each request itself: an "add" goes into the helper's table first
// (helperServer.allow), so the engine can only ever bind, connect to or
// run what a real request named. The request then goes on to the engine,
// which applies it, over a stream socket pair, one JSON line each way.
type ctlRelay struct {
	l      *net.UnixListener
	engine *os.File
	in     *bufio.Reader
	srv    *helperServer
	opts   *NetOptions // what the command line turned off (forwardsOff)
	broken error       // the engine's answers are out of step: no more requests
}

// Bounds of the relay: how long a client may take to send its request,
// how long the engine may take to apply one ("all" binds tens of
// thousands of ports through the helper, within the client's 30 s), and
// how long its answer may be ("list" after "all").
const (
	ctlReadTimeout   = 10 * time.Second
	ctlEngineTimeout = 25 * time.Second
	ctlMaxAnswer     = 16 << 20
)

func newCtlRelay(l *net.UnixListener, engine *os.File, srv *helperServer, o *NetOptions) *ctlRelay {
	return &ctlRelay{l: l, engine: engine, in: bufio.NewReader(engine), srv: srv, opts: o}
}

// serve answers one client at a time until the listener is closed.
func (c *ctlRelay) serve() {
	for {
		conn, err := c.l.AcceptUnix()
		if err != nil {
			return
		}
		conn.SetDeadline(time.Now().Add(ctlReadTimeout))
		var req ctlRequest
		var resp ctlResponse
		line, err := bufio.NewReader(io.LimitReader(conn, 1<<20)).ReadBytes('\n')
		if err == nil || (err == io.EOF && len(line) > 0) {
			err = json.Unmarshal(line, &req)
		}
		if err != nil {
			resp.Error = "bad request: " + err.Error()
		} else {
			resp = c.handle(&req)
		}
		conn.SetDeadline(time.Now().Add(ctlReadTimeout))
		json.NewEncoder(conn).Encode(resp)
		conn.Close()
	}
}

func (c *ctlRelay) handle(req *ctlRequest) ctlResponse {
	switch req.Op {
	case "list":
		return c.ask(&ctlRequest{Op: "list"})
	case "add":
		// What the command line refuses at start, the control socket
		// refuses later.
		o := *c.opts
		o.TCPPorts, o.UDPPorts = req.TCP, req.UDP
		if err := forwardsOff(&o); err != nil {
			return ctlResponse{Error: err.Error()}
		}
		undo, err := c.srv.allowUndo(req)
		if err != nil {
			return ctlResponse{Error: err.Error()}
		}
		resp := c.ask(req)
		if !resp.OK {
			undo()
		}
		return resp
	case "remove":
		resp := c.ask(req)
		if resp.OK {
			c.srv.revoke(req)
		}
		return resp
	}
	return ctlResponse{Error: fmt.Sprintf("unknown op %q (want list, add or remove)", req.Op)}
}

// ask has the engine carry out req and returns its answer.
func (c *ctlRelay) ask(req *ctlRequest) ctlResponse {
	if c.broken == nil {
		c.engine.SetDeadline(time.Now().Add(ctlEngineTimeout))
		var resp ctlResponse
		msg, _ := json.Marshal(req)
		_, err := c.engine.Write(append(msg, '\n'))
		var line []byte
		for err == nil {
			var part []byte
			part, err = c.in.ReadSlice('\n')
			line = append(line, part...)
			if err == bufio.ErrBufferFull && len(line) <= ctlMaxAnswer {
				err = nil
			} else if err == nil {
				break
			}
		}
		if err == nil {
			err = json.Unmarshal(line, &resp)
		}
		if err == nil {
			return resp
		}
		c.broken = err
	}
	return ctlResponse{Error: "the engine does not answer: " + c.broken.Error()}
}

// serveControl is the engine's side: it carries out the requests the
// helper relays, one at a time, on the engine's goroutine through
// Engine.Call.
func serveControl(f *os.File, eng *slirp.Engine) {
	dec := json.NewDecoder(f)
	enc := json.NewEncoder(f)
	for {
		var req ctlRequest
		if err := dec.Decode(&req); err != nil {
			return
		}
		var resp ctlResponse
		eng.Call(func() { resp = handleControl(eng, &req) })
		if err := enc.Encode(resp); err != nil {
			return
		}
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
	ports, err := specialPorts(req)
	if err != nil {
		return err
	}
	for _, port := range ports {
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
	c, err := net.DialTimeout("unix", qemusock.FileName(path), 5*time.Second)
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
