// Command tcprr measures TCP request/response from the QEMU benchmark
// guest, whose busybox has no such tool: it sends one byte and waits for
// it back, over one connection, for the given seconds, and prints the
// transactions per second (netperf's TCP_RR).
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: tcprr HOST:PORT SECONDS")
		os.Exit(2)
	}
	secs, _ := strconv.Atoi(os.Args[2])
	c, err := net.Dial("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	b := make([]byte, 1)
	n, start := 0, time.Now()
	for time.Since(start) < time.Duration(secs)*time.Second {
		if _, err := c.Write(b); err != nil {
			os.Exit(1)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			os.Exit(1)
		}
		n++
	}
	fmt.Printf("%.0f\n", float64(n)/time.Since(start).Seconds())
}
