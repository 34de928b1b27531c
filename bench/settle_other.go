//go:build !unix

package bench

// settleDisk does nothing where there is no sync(2).
func settleDisk() {}
