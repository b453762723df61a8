package fakecloud

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"maps"
	"testing"
)

func TestParseCloudConfig(t *testing.T) {
	t.Parallel()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte("# lease\nexport UNDERSTUDY_LEASE_FILE='/var/lib/understudy/lease'\nUNDERSTUDY_LEASE_SECONDS=\"900\"\n\nUNDERSTUDY_DEADLINE=1700000000\n"))
	_ = zw.Close()
	doc := "#cloud-config\n" +
		"ssh_keys:\n  ed25519_private: |\n    KEY\n" +
		"ssh_authorized_keys:\n  - ssh-ed25519 AAAA one\n  - ssh-ed25519 BBBB two\n" +
		"write_files:\n  - path: /etc/other\n    content: x\n" +
		"  - path: /etc/understudy/lease.env\n    encoding: gz+b64\n    content: " + base64.StdEncoding.EncodeToString(gz.Bytes()) + "\n"
	cc, ok, err := parseCloudConfig(doc)
	if err != nil || !ok {
		t.Fatalf("parse: %v %v", ok, err)
	}
	if cc.SSHKeys.ED25519Private != "KEY\n" || len(cc.SSHAuthorizedKeys) != 2 {
		t.Errorf("config = %+v", cc)
	}
	env, err := cc.leaseEnv()
	want := map[string]string{
		"UNDERSTUDY_LEASE_FILE": "/var/lib/understudy/lease", "UNDERSTUDY_LEASE_SECONDS": "900", "UNDERSTUDY_DEADLINE": "1700000000",
	}
	if err != nil || !maps.Equal(env, want) {
		t.Errorf("lease env = %v, %v; want %v", env, err, want)
	}

	for _, other := range []string{"#!/bin/sh\nrm -rf /\n", "", "cloud-config\nssh_keys: {}\n"} {
		if _, ok, err := parseCloudConfig(other); ok || err != nil {
			t.Errorf("parse %q: ok %v err %v, want neither", other, ok, err)
		}
	}
	if _, _, err := parseCloudConfig("#cloud-config\nssh_keys: [\n"); err == nil {
		t.Error("broken YAML accepted")
	}
}
