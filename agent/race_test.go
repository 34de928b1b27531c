//go:build race

package agent

// raceEnabled says the race detector is on; tests that load the CPU hard
// scale down under it.
const raceEnabled = true
