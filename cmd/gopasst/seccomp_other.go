//go:build !amd64 && !arm64

package main

// No allow-list is kept for this architecture: installFilter says so and
// the engine runs without seccomp, the rest of the sandbox in place.
const auditArch = 0

var seccompAllowed, seccompRepairAllowed, seccompAgentAllowed, seccompKilled []uint32

func seccompChecked(int) []seccompRule { return nil }

func seccompRuntimeChecked(int) []seccompRule { return nil }

func seccompAgentChecked(int) []seccompRule { return nil }
