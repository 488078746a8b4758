// Command connhold holds many TCP connections from the migration
// benchmark's guest, whose busybox cannot: it opens N connections to an
// echo server, says so, and on SIGUSR1 (after the migration) sends a
// byte on each, says how many echoed it back, and exits.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	n, err := strconv.Atoi(os.Args[len(os.Args)-1])
	if len(os.Args) != 3 || err != nil {
		fmt.Fprintln(os.Stderr, "usage: connhold HOST:PORT N")
		os.Exit(2)
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	conns := make([]net.Conn, n)
	for i := range conns {
		if conns[i], err = net.Dial("tcp", os.Args[1]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	fmt.Printf("GOPASST-HELD %d\n", n)
	<-usr1
	var alive atomic.Int32
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := []byte{1}
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := c.Write(b); err == nil {
				if _, err := io.ReadFull(c, b); err == nil {
					alive.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("GOPASST-ALIVE %d\n", alive.Load())
}
