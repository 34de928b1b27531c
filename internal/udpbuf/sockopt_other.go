//go:build !unix

package udpbuf

// getsockoptInt reports Wanted where the buffer sizes cannot be read
// back, so no warning is given that could be wrong.
func getsockoptInt(uintptr, int) (int, error) { return Wanted, nil }
