// Package bench measures Drover's parts against what they could have used
// instead: the Raft log store against raft-boltdb and raft-wal under a real
// three-server hashicorp/raft cluster, and the artifact format's SHA-256 and
// chunker against BLAKE3 and two FastCDC libraries, and the ONNX runtime's
// engine against gonnx. It is a module of its own
// so that the baselines never enter the product's dependency graph; the
// benchmarks are in the test files, and README.md says how to run them.
package bench
