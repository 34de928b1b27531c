//go:build race

package peer

// raceEnabled says the race detector is on; tests that load the CPU hard
// scale down under it.
const raceEnabled = true
