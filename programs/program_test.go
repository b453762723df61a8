package programs_test

import (
	"slices"
	"testing"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/programs"
)

func TestForUnknownProvider(t *testing.T) {
	_, err := programs.For("moon")
	if code := job.CodeOf(err); code != job.CodeInvalidArgument {
		t.Fatalf("For(moon) code = %q (%v), want %q", code, err, job.CodeInvalidArgument)
	}
}

func TestNames(t *testing.T) {
	names := programs.Names()
	if !slices.Contains(names, "local") || !slices.IsSorted(names) {
		t.Errorf("Names() = %v, want sorted and holding local", names)
	}
}

func TestRegisterTwicePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Register of a taken name did not panic")
		}
	}()
	programs.Register("local", nil)
}

func TestTagsStandardKeysWin(t *testing.T) {
	spec := programs.Spec{TrainID: "tr-1", EndpointID: "ep", Version: "v1", Provider: "local",
		Tags: map[string]string{"team": "a", programs.TagTrainID: "forged"}}
	got := programs.Tags(spec)
	want := map[string]string{"team": "a", "train_id": "tr-1", "endpoint_id": "ep", "version": "v1", "provider": "local"}
	if len(got) != len(want) {
		t.Fatalf("Tags = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("Tags[%s] = %q, want %q", k, got[k], v)
		}
	}
	if spec.Tags[programs.TagTrainID] != "forged" {
		t.Error("Tags modified the spec's map")
	}
}

func TestDecodeOutputs(t *testing.T) {
	good := map[string]any{
		"host": "127.0.0.1", "port": float64(2222), "user": "root", "hostKey": "ssh-ed25519 AAAA",
		"instanceId": "local-x", "workDir": "/w", "gpu": "none", "hourlyPrice": float64(0.5),
	}
	o, err := programs.DecodeOutputs(good)
	if err != nil {
		t.Fatal(err)
	}
	want := programs.Outputs{Host: "127.0.0.1", Port: 2222, User: "root", HostKey: "ssh-ed25519 AAAA",
		InstanceID: "local-x", WorkDir: "/w", GPU: "none", HourlyPrice: 0.5, HostKeyTrust: programs.TrustInjected}
	if o != want {
		t.Errorf("DecodeOutputs = %+v, want %+v", o, want)
	}
	withNew := map[string]any{"leaseFile": "/w/lease", "hostKeyTrust": "first-use"}
	for k, v := range good {
		withNew[k] = v
	}
	if o, err := programs.DecodeOutputs(withNew); err != nil || o.LeaseFile != "/w/lease" || o.HostKeyTrust != programs.TrustFirstUse {
		t.Errorf("DecodeOutputs with lease and trust = %+v, %v", o, err)
	}
	for name, mutate := range map[string]func(m map[string]any){
		"missing host":   func(m map[string]any) { delete(m, "host") },
		"port as string": func(m map[string]any) { m["port"] = "22" },
		"port fraction":  func(m map[string]any) { m["port"] = 22.5 },
		"port too big":   func(m map[string]any) { m["port"] = float64(70000) },
		"missing price":  func(m map[string]any) { delete(m, "hourlyPrice") },
		"lease not text": func(m map[string]any) { m["leaseFile"] = 3.0 },
	} {
		m := map[string]any{}
		for k, v := range good {
			m[k] = v
		}
		mutate(m)
		if _, err := programs.DecodeOutputs(m); job.CodeOf(err) != job.CodeInternal {
			t.Errorf("%s: err = %v, want code %q", name, err, job.CodeInternal)
		}
	}
}
