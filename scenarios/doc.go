// Package scenarios holds Drover's end-to-end failure scenarios: real
// servers in one process (see package cluster), faults injected, and
// invariants checked on what clients observed. Nothing imports it.
package scenarios
