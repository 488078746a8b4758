// Command soakguest is the soak test's agent in a QEMU guest
// (TestSoakVhostUser): it serves the workload's TCP protocol and a UDP
// echo on the guest's PORT and PORT+1, and runs the ops the test sends
// it over a virtio-serial port, outside the network it tests: each line
// "ID OP" (tests/internal/soak's Env.Run) is run at once, concurrently,
// and answered "ID ok OUTPUT" or "ID err MESSAGE", quoted Go strings.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/gopasst/gopasst/tests/internal/soak"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: soakguest PORT-DEVICE PORT")
		os.Exit(2)
	}
	port, _ := strconv.Atoi(os.Args[2])
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	soak.Serve(l)
	pc, err := net.ListenPacket("udp", fmt.Sprintf(":%d", port+1))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	soak.Echo(pc)
	dev, err := os.OpenFile(os.Args[1], os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var mu sync.Mutex
	answer := func(id, status, text string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(dev, "%s %s %s\n", id, status, strconv.Quote(text))
	}
	answer("0", "ok", "ready")
	s := bufio.NewScanner(dev)
	for s.Scan() {
		id, op, _ := strings.Cut(s.Text(), " ")
		go func() {
			out, err := soak.Here.Run(op)
			if err != nil {
				answer(id, "err", fmt.Sprintf("%v: %s", err, out))
				return
			}
			answer(id, "ok", out)
		}()
	}
	fmt.Fprintln(os.Stderr, "soakguest: the port:", s.Err())
	os.Exit(1)
}
