package fakecloud

import (
	"testing"
	"time"
)

func TestFaultsSet(t *testing.T) {
	t.Parallel()
	var f Faults
	for _, spec := range []string{"create-500-but-created", "no-capacity", "rate-limit", "slow-delete", "auth", "no-user-data", "preempt-after=90s", "preempt-once"} {
		if err := f.Set(spec); err != nil {
			t.Errorf("Set(%q): %v", spec, err)
		}
	}
	want := Faults{CreateFailsButCreates: true, NoCapacity: true, RateLimit: true, SlowDelete: true, Auth: true, NoUserData: true, PreemptAfter: 90 * time.Second, PreemptOnce: true}
	if f != want {
		t.Errorf("faults = %+v, want %+v", f, want)
	}
	for _, bad := range []string{"", "explode", "preempt-after", "preempt-after=0s", "preempt-after=soon", "auth=yes"} {
		if err := new(Faults).Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	ok := Config{Provider: RunPod, Dir: "/srv/fake"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, edit := range map[string]func(*Config){
		"provider":             func(c *Config) { c.Provider = "aws" },
		"dir":                  func(c *Config) { c.Dir = "" },
		"boot delay":           func(c *Config) { c.BootDelay = -time.Second },
		"ssh port":             func(c *Config) { c.SSHPort = 70000 },
		"no-user-data, runpod": func(c *Config) { c.Faults.NoUserData = true },
		"relative sshd":        func(c *Config) { c.SSHDPath = "sshd" },
	} {
		c := ok
		edit(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
