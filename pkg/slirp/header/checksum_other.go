//go:build !amd64

package header

func sumLE(b []byte) uint64 { return sumLEGeneric(b) }
