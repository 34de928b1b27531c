// Package onnxpb holds the Go types of ONNX's protobuf schema (models,
// graphs, tensors), generated from onnx.proto by `make proto`.
package onnxpb
