// Package header provides zero-copy typed views over packet headers.
//
// Each view is a byte slice with accessors, in the manner of gVisor's
// tcpip/header: parsing a frame allocates nothing, and building one writes
// fields in place inside a buffer the caller owns. Views do not validate on
// their own; callers check lengths with the IsValid functions first.
package header
