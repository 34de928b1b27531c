// Package onnx is Drover's ONNX inference engine: pure Go, no cgo, run by
// the drover-onnx runtime binary (never linked into the agent). It loads
// an ONNX model, refuses at load time anything it cannot run (naming the
// node and operator), and computes on the CPU with float32, float64,
// float16 and bfloat16 (widened to float32), the integer types and bool.
//
// It is written here rather than taken from the pure-Go ONNX libraries on
// the module proxy, after running those against the ONNX project's own
// backend node tests (docs/onnx.md has the numbers):
//
//   - github.com/advancedclimatesystems/gonnx v1.1.0 implements operator
//     set 13 only and refuses any model that imports another version; on
//     the single-operator node tests it passes 80 of 819 as shipped (178
//     with the opset rewritten to 13), has no pooling, no
//     BatchNormalization and no GlobalAveragePool, its Conv fails on a
//     bias, and it runs a small convolutional network about 100 times
//     slower than this engine (which passes 653 of those 819 tests).
//   - github.com/owulveryck/onnx-go v0.5.0 (2020, gorgonia and
//     gogo/protobuf) passes 111 of them, and panics inside gorgonia's
//     worker goroutines on some, which no caller can recover.
//
// Neither could be extended to the conformance asked of this runtime
// without rewriting most of it. Every operator in Operators passes every
// ONNX backend node test that uses it (TestNodeConformance).
//
// A Model is immutable after Load and safe for concurrent Run calls.
package onnx
