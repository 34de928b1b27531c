// Command drover-agent is the Drover agent that runs on every fleet
// machine; everything lives in package agent and its command line in
// agent/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/droverhq/drover/agent/cli"
)

func main() {
	// quic-go prints its own unstructured line when the kernel caps UDP
	// buffers; Drover logs one that names the sysctl (internal/udpbuf).
	if _, set := os.LookupEnv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING"); !set {
		_ = os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true")
	}
	// The agent's live heap is a few MiB and it runs on edge boards that
	// count every one: collect at half Go's default heap growth, unless
	// GOGC says otherwise. Idle, it allocates little, so the extra
	// collections cost no measurable CPU.
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(50)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, restore the default handling, so a second
	// Ctrl-C kills an agent that is slow to wind down.
	context.AfterFunc(ctx, stop)
	os.Exit(cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
