package names

import "testing"

func TestRules(t *testing.T) {
	for _, tt := range []struct {
		s                string
		name, key, value bool
	}{
		{"resnet-50", true, true, true},
		{"gpu-01", true, true, true},
		{"", false, false, true},
		{"Foo", false, true, true},
		{"-a", false, false, false},
		{"a_", false, false, false},
		{"drover.dev/zone", false, true, false},
		{"Drover.dev/zone", false, false, false},
		{"a b", false, false, false},
		{string(make([]byte, 64)), false, false, false},
	} {
		if got := IsName(tt.s); got != tt.name {
			t.Errorf("IsName(%q) = %v", tt.s, got)
		}
		if got := IsLabelKey(tt.s); got != tt.key {
			t.Errorf("IsLabelKey(%q) = %v", tt.s, got)
		}
		if got := IsLabelValue(tt.s); got != tt.value {
			t.Errorf("IsLabelValue(%q) = %v", tt.s, got)
		}
	}
}
