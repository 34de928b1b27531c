package agent

import "testing"

// TestLastLinesBytes checks how --tail N turns into the bytes the runtime
// reads back: whole lines, a final line without a newline counting as one.
func TestLastLinesBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want int64
	}{
		{"a\nb\nc\n", 1, 2},
		{"a\nb\nc\n", 2, 4},
		{"a\nb\nc\n", 3, 0}, // all of it
		{"a\nb\nc\n", 9, 0},
		{"a\nb\nc", 1, 1},
		{"a\nb\nc", 2, 3},
		{"a\nb\nc\n", 0, 0},
		{"", 1, 0},
	} {
		if got := lastLinesBytes([]byte(tc.in), tc.n); got != tc.want {
			t.Errorf("lastLinesBytes(%q, %d) = %d, want %d", tc.in, tc.n, got, tc.want)
		}
	}
}
