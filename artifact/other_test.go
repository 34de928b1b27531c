//go:build !unix

package artifact

import "testing"

func makeFIFO(t *testing.T, _ string) {
	t.Skip("named pipes in a directory tree are a Unix matter")
}

func makeSocket(t *testing.T, _ string) {
	t.Skip("sockets in a directory tree are a Unix matter")
}
