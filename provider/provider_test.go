package provider

import (
	"testing"

	p "github.com/pulumi/pulumi-go-provider"
	"github.com/pulumi/pulumi-go-provider/infer"
)

const localWorkerToken = "understudy:index:LocalWorker"

func TestSchema(t *testing.T) {
	t.Parallel()
	prov, err := New()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := p.GetSchema(t.Context(), Name, Version, prov)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Name != Name || spec.Version != Version {
		t.Errorf("schema name %q version %q", spec.Name, spec.Version)
	}
	res, ok := spec.Resources[localWorkerToken]
	if !ok {
		t.Fatalf("schema has no %s; resources: %v", localWorkerToken, mapKeys(spec.Resources))
	}
	if !res.InputProperties["hostPrivateKey"].Secret {
		t.Error("hostPrivateKey input is not secret")
	}
	if !res.Properties["hostPrivateKey"].Secret {
		t.Error("hostPrivateKey output is not secret")
	}
	for _, name := range []string{"trainId", "hostPrivateKey", "authorizedKey", "baseDir"} {
		if !contains(res.RequiredInputs, name) {
			t.Errorf("input %s is not required", name)
		}
	}
	if contains(res.RequiredInputs, "sshdPath") {
		t.Error("sshdPath is required; want optional with a default")
	}
	for _, name := range []string{"host", "port", "user", "pid", "dir", "workDir", "hostPublicKey", "instanceId", "gpu"} {
		if _, ok := res.Properties[name]; !ok {
			t.Errorf("state has no %s", name)
		}
	}
}

// Any change of an input replaces the worker.
func TestDiffReplacesOnAnyInputChange(t *testing.T) {
	t.Parallel()
	k := newKeys(t)
	olds := LocalWorkerArgs{TrainID: "tr-1", HostPrivateKey: k.hostPEM, AuthorizedKey: k.authorized, BaseDir: "/srv/workers"}
	state := LocalWorkerState{LocalWorkerArgs: olds, Dir: "/srv/workers/tr-1-x", Port: 2222, PID: 42}
	state.SSHDPath = DefaultSSHDPath
	other := newKeys(t)
	cases := map[string]func(a *LocalWorkerArgs){
		"trainId":        func(a *LocalWorkerArgs) { a.TrainID = "tr-2" },
		"hostPrivateKey": func(a *LocalWorkerArgs) { a.HostPrivateKey = other.hostPEM },
		"authorizedKey":  func(a *LocalWorkerArgs) { a.AuthorizedKey = other.authorized },
		"baseDir":        func(a *LocalWorkerArgs) { a.BaseDir = "/srv/other" },
		"sshdPath":       func(a *LocalWorkerArgs) { a.SSHDPath = "/opt/sshd" },
		"tags":           func(a *LocalWorkerArgs) { a.Tags = map[string]string{"train_id": "tr-1"} },
	}
	w := &LocalWorker{}
	for name, mutate := range cases {
		news := olds
		mutate(&news)
		resp, err := w.Diff(t.Context(), infer.DiffRequest[LocalWorkerArgs, LocalWorkerState]{ID: "local-x", State: state, Inputs: news})
		if err != nil {
			t.Fatal(err)
		}
		if !resp.HasChanges || len(resp.DetailedDiff) != 1 || resp.DetailedDiff[name].Kind != p.UpdateReplace {
			t.Errorf("change of %s: hasChanges %v, diff %+v; want only %s update&replace", name, resp.HasChanges, resp.DetailedDiff, name)
		}
	}
	// The default sshd path, given or left out, is no change.
	resp, err := w.Diff(t.Context(), infer.DiffRequest[LocalWorkerArgs, LocalWorkerState]{ID: "local-x", State: state, Inputs: olds})
	if err != nil {
		t.Fatal(err)
	}
	if resp.HasChanges {
		t.Errorf("same inputs: diff %+v, want none", resp.DetailedDiff)
	}
}

func mapKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
