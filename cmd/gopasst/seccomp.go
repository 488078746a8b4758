package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The engine's seccomp filter (and gopasst repair's and the pasta
// agent's, installRepairSeccomp, installAgentSeccomp):
// an allow-list of what it and the Go runtime call once they serve
// (seccomp_linux.go), built as classic BPF by hand.
// A call that only an attacker makes (exec, ptrace, mounts, namespaces,
// executable memory, another process: seccompKilled and the checked
// calls' failures) kills the process. Anything else fails with EPERM, and
// the kernel logs it (audit type 1326, in dmesg) with the syscall's
// number: a call nobody foresaw on a rare path of the Go runtime or
// library fails like a refused one, which gopasst reports and survives.
// A system call for the wrong architecture (x32, i386 on amd64) kills the
// process. Other architectures have no list yet (seccomp_other.go).

// seccompRule is what the filter does with one system call: action, or,
// with check, allow it when its argument passes and take action if not.
type seccompRule struct {
	nr     uint32
	action uint32
	check  *argCheck
}

// argCheck checks argument arg of a call: its value must be one of
// values (and its upper 32 bits zero, with wide), or, with mask, have
// none of mask's bits set. A value in denied gets the filter's default
// answer rather than the rule's. An int argument is 32 bits to the
// kernel.
type argCheck struct {
	arg    int
	values []uint32
	denied []uint32
	wide   bool
	mask   uint32
}

// BPF offsets into struct seccomp_data.
const (
	seccompNr   = 0
	seccompArch = 4
	seccompArgs = 16
)

// seccompArg is the offset of the low (hi false) or high half of
// argument i.
func seccompArg(i int, hi bool) uint32 {
	off := uint32(seccompArgs + 8*i)
	bigEndian := binary.NativeEndian.Uint16([]byte{0, 1}) == 1
	if hi != bigEndian {
		off += 4
	}
	return off
}

// seccompProgram is rules, in order, then deny for everything else. Each
// rule is one comparison of the call's number, then a block of its own
// that ends in a return: every jump is short.
func seccompProgram(rules []seccompRule, deny uint32) []unix.SockFilter {
	stmt := func(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
	jmp := func(op uint16, k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_JMP | op | unix.BPF_K, Jt: jt, Jf: jf, K: k}
	}
	ld := func(off uint32) unix.SockFilter { return stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, off) }
	ret := func(k uint32) unix.SockFilter { return stmt(unix.BPF_RET|unix.BPF_K, k) }

	p := []unix.SockFilter{
		ld(seccompArch),
		jmp(unix.BPF_JEQ, auditArch, 1, 0),
		ret(unix.SECCOMP_RET_KILL_PROCESS),
		ld(seccompNr),
	}
	for _, r := range rules {
		block := []unix.SockFilter{ret(r.action)}
		if c := r.check; c != nil {
			block = nil
			if c.wide {
				block = append(block, ld(seccompArg(c.arg, true)), jmp(unix.BPF_JEQ, 0, 1, 0), ret(r.action))
			}
			block = append(block, ld(seccompArg(c.arg, false)))
			if c.mask != 0 {
				block = append(block, jmp(unix.BPF_JSET, c.mask, 0, 1))
			}
			// Then: ret action; ret deny, with denied; ret ALLOW.
			tail := []unix.SockFilter{ret(r.action), ret(unix.SECCOMP_RET_ALLOW)}
			if len(c.denied) > 0 {
				tail = []unix.SockFilter{ret(r.action), ret(deny), ret(unix.SECCOMP_RET_ALLOW)}
			}
			left := len(c.values) + len(c.denied)
			for _, v := range c.values {
				left--
				block = append(block, jmp(unix.BPF_JEQ, v, uint8(left+len(tail)-1), 0))
			}
			for _, v := range c.denied {
				left--
				block = append(block, jmp(unix.BPF_JEQ, v, uint8(left+1), 0))
			}
			block = append(block, tail...)
		}
		// The number is reloaded after a block that loaded an argument;
		// every block returns, so only the comparison needs the number.
		p = append(p, jmp(unix.BPF_JEQ, r.nr, 0, uint8(len(block))))
		p = append(p, block...)
	}
	return append(p, ret(deny))
}

// seccompRules is a filter: allowed, then the calls allowed with their
// arguments checked, then the ones that kill (seccompKilled, the same
// for every filter).
func seccompRules(allowed []uint32, checked []seccompRule) []seccompRule {
	var rules []seccompRule
	for _, nr := range allowed {
		rules = append(rules, seccompRule{nr: nr, action: unix.SECCOMP_RET_ALLOW})
	}
	rules = append(rules, checked...)
	for _, nr := range seccompKilled {
		rules = append(rules, seccompRule{nr: nr, action: unix.SECCOMP_RET_KILL_PROCESS})
	}
	return rules
}

// installSeccomp installs the engine's filter on every thread.
func installSeccomp() error {
	return installFilter(seccompAllowed, seccompChecked(os.Getpid()))
}

// installRepairSeccomp installs gopasst repair's filter on every thread:
// the runtime's calls and the repair loop's, nothing else.
func installRepairSeccomp() error {
	return installFilter(seccompRepairAllowed, seccompRuntimeChecked(os.Getpid()))
}

// installAgentSeccomp installs the pasta agent's filter on every thread:
// the runtime's calls and its request loop's.
func installAgentSeccomp() error {
	return installFilter(seccompAgentAllowed, seccompAgentChecked(os.Getpid()))
}

// installFilter installs a filter on every thread, with no_new_privs,
// which a filter needs without CAP_SYS_ADMIN. Both are set from one
// locked thread, and TSYNC carries both to the others. Set by two calls
// from a goroutine that moved between them (it did, on a loaded
// machine), no_new_privs stayed on one thread, and the filter went on
// without it, or failed (EACCES) for an unprivileged caller.
func installFilter(allowed []uint32, checked []seccompRule) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if allowed == nil {
		fmt.Fprintf(os.Stderr, "gopasst: warning: no seccomp allow-list for %s; running without seccomp\n", runtime.GOARCH)
		return nil
	}
	// The runtime starts its network poller with its first timer, and
	// no filter allows what that takes: start it now.
	time.AfterFunc(time.Hour, func() {}).Stop()
	prog := seccompProgram(seccompRules(allowed, checked), seccompDeny())
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	r, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC|unix.SECCOMP_FILTER_FLAG_LOG, uintptr(unsafe.Pointer(&fprog)))
	switch {
	case e != 0:
		return fmt.Errorf("seccomp: %w", e)
	case r != 0: // TSYNC: the thread that could not take the filter
		return fmt.Errorf("seccomp: thread %d could not take the filter", r)
	}
	return nil
}
