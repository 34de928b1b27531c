//go:build unix

package bench

import "syscall"

// settleDisk asks the kernel to write back everything pending on every file
// system, so that one benchmark's leftovers (dirty pages, journal commits,
// discards of the files the last one deleted) do not run inside the next
// one's measurement.
func settleDisk() { syscall.Sync() }
