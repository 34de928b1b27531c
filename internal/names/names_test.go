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

func TestFromHostname(t *testing.T) {
	for in, want := range map[string]string{
		"gpu-01":                  "gpu-01",
		"Johns-MacBook-Pro.local": "johns-macbook-pro.local",
		"HOST_1":                  "host_1",
		"web server!":             "web-server",
		"-._":                     "",
		string(make([]byte, 70)):  "",
	} {
		got := FromHostname(in)
		if got != want {
			t.Errorf("FromHostname(%q) = %q, want %q", in, got, want)
		}
		if got != "" && !IsName(got) {
			t.Errorf("FromHostname(%q) = %q, which is not a name", in, got)
		}
	}
}
