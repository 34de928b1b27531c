// Command drover-onnx is Drover's built-in ONNX runtime: the agent starts
// it as a child process per model version; everything lives in
// agent/runtime/onnx and its command line in agent/runtime/onnx/onnxcmd.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/droverhq/drover/agent/runtime/onnx/onnxcmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, restore the default handling, so a second
	// one kills a runtime that is slow to stop.
	context.AfterFunc(ctx, stop)
	os.Exit(onnxcmd.Main(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
