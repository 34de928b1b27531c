//go:build !linux

package artifact

import "time"

// threadCPU would return the calling thread's CPU time; only Linux reports
// it per thread, so elsewhere the CPU-time figures are left out.
func threadCPU() time.Duration { return 0 }
