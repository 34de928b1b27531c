// Package units formats quantities for people (sizes in binary units) and
// parses the sizes and rates people write on command lines.
package units

import "fmt"

// Bytes renders a size in binary units: 512 B, 1.5 KiB, 3.2 GiB, up to EiB.
func Bytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
