//go:build sandboxtest

package main

import (
	"log"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The test build's engine probes its own sandbox for TestSandbox: with
// GOPASST_PROBE=NAME,... it tries each call once it serves, logs
// "probe NAME: RESULT", and exits. GOPASST_PROBE_PID is another process.
func init() {
	if os.Getenv("GOPASST_PROBE") != "" {
		sandboxProbe = probeSandbox
	}
}

func probeSandbox(logger *log.Logger) {
	other, _ := strconv.Atoi(os.Getenv("GOPASST_PROBE_PID"))
	probes := map[string]func() error{
		// A new user namespace with CLONE_FS, which the kernel refuses
		// with EINVAL if the filter lets it through: nothing is cloned.
		"clone-ns": func() error {
			_, _, e := unix.RawSyscall6(unix.SYS_CLONE, unix.CLONE_NEWUSER|unix.CLONE_FS, 0, 0, 0, 0, 0)
			return errnoErr(e)
		},
		// Queue a newline as input on standard error's terminal, if any.
		"tiocsti": func() error {
			c := byte('\n')
			_, _, e := unix.Syscall(unix.SYS_IOCTL, 2, unix.TIOCSTI, uintptr(unsafe.Pointer(&c)))
			return errnoErr(e)
		},
		// Executable memory, fresh or made so.
		"mmap-exec": func() error {
			b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANON)
			if err == nil {
				unix.Munmap(b)
			}
			return err
		},
		"mprotect-exec": func() error {
			b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
			if err != nil {
				return err
			}
			defer unix.Munmap(b)
			return unix.Mprotect(b, unix.PROT_READ|unix.PROT_EXEC)
		},
		// Run a program; the path is the empty root's only directory.
		"execve": func() error { return unix.Exec("/", []string{"/"}, nil) },
		// Sockets of other families than IPv4 and IPv6.
		"socket-netlink": func() error { return socketProbe(unix.AF_NETLINK) },
		"socket-unix":    func() error { return socketProbe(unix.AF_UNIX) },
		"openat": func() error {
			fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err == nil {
				unix.Close(fd)
			}
			return err
		},
		// Signal 0 only asks whether the process exists.
		"tgkill": func() error { return unix.Tgkill(other, other, 0) },
		"prlimit": func() error {
			var lim unix.Rlimit
			return unix.Prlimit(other, unix.RLIMIT_NOFILE, nil, &lim)
		},
	}
	for _, name := range strings.Split(os.Getenv("GOPASST_PROBE"), ",") {
		if probe := probes[name]; probe == nil {
			logger.Printf("probe %s: no such probe", name)
		} else if err := probe(); err != nil {
			logger.Printf("probe %s: %v", name, err)
		} else {
			logger.Printf("probe %s: allowed", name)
		}
	}
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func socketProbe(family int) error {
	fd, err := unix.Socket(family, unix.SOCK_DGRAM, 0)
	if err == nil {
		unix.Close(fd)
	}
	return err
}
