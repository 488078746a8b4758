package main

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// TestEngineEnvironGODEBUG checks that the engine starts with preemption
// signals off, after the caller's own GODEBUG settings if any, so that
// this one wins.
func TestEngineEnvironGODEBUG(t *testing.T) {
	for _, c := range []struct{ caller, want string }{
		{"", "GODEBUG=asyncpreemptoff=1"}, // none
		{"madvdontneed=1,asyncpreemptoff=0", "GODEBUG=madvdontneed=1,asyncpreemptoff=0,asyncpreemptoff=1"},
	} {
		t.Setenv("GODEBUG", c.caller) // restored after the test
		if c.caller == "" {
			os.Unsetenv("GODEBUG")
		}
		var got []string
		for _, e := range engineEnviron(engineEnv{}) {
			if strings.HasPrefix(e, "GODEBUG=") {
				got = append(got, e)
			}
		}
		if !slices.Equal(got, []string{c.want}) {
			t.Errorf("caller's GODEBUG %q: the engine's %q, want %q", c.caller, got, c.want)
		}
	}
}
