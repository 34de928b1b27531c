// Package bench measures Drover's Raft log store against the stores it could
// have used instead, raft-boltdb and raft-wal, under a real three-server
// hashicorp/raft cluster. It is a module of its own so that the baselines
// never enter the product's dependency graph; the benchmarks are in the test
// files, and README.md says how to run them.
package bench
