// Package programtest is the conformance suite that every program in package programs must
// pass. A provider's test is one call: programtest.Run(t, programtest.Harness{…}).
//
// The suite runs the program under pulumi.WithMocks: the harness fakes what the provider
// answers to each resource registration, written from the provider's documented API shapes,
// and the suite checks the contract: the spec is validated with job.CodeInvalidArgument,
// every output is present and typed, the host key is the public half of the spec's host
// key, the job's tags reach every resource that takes labels, the host private key reaches
// resources only as a secret and never an output, and in-repo resources carry the in-repo
// provider's version.
package programtest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/provider/version"
)

// Harness describes one provider's program to the suite.
type Harness struct {
	// Provider is the program's name for programs.For.
	Provider string
	// Configure fills in the provider-specific part of a valid spec (such as Spec.Local).
	// The suite sets the common fields.
	Configure func(t *testing.T, spec *programs.Spec)
	// NewResource fakes the provider's answer to the registration of one resource: its id
	// and output state. Echo the inputs and add what the provider computes.
	NewResource func(args pulumi.MockResourceArgs) (id string, state resource.PropertyMap, err error)
	// Call fakes invokes (data sources such as an image lookup); nil answers every call with
	// an error.
	Call func(args pulumi.MockCallArgs) (resource.PropertyMap, error)
	// Untagged lists resource types that cannot carry labels; every other custom resource
	// must receive the job's tags in its "tags" input.
	Untagged []string
	// Invalid lists provider-specific mutations of a valid spec that Validate must refuse.
	Invalid map[string]func(spec *programs.Spec)
}

// Keys is key material of one test job, generated as the service generates it.
type Keys struct {
	HostPrivateKey string        // OpenSSH PEM ed25519 private key
	HostPublicKey  string        // its authorized_keys line
	HostKey        ssh.PublicKey // the same, parsed, for pinning
	AuthorizedKey  string        // the job's public key line
	JobSigner      ssh.Signer    // the job's private key, for logging in
}

// NewKeys generates a host key and a job key.
func NewKeys(t testing.TB) Keys {
	t.Helper()
	_, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(hostPriv, "")
	if err != nil {
		t.Fatal(err)
	}
	hostPub, err := ssh.NewPublicKey(hostPriv.Public())
	if err != nil {
		t.Fatal(err)
	}
	_, userPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	job, err := ssh.NewSignerFromKey(userPriv)
	if err != nil {
		t.Fatal(err)
	}
	return Keys{
		HostPrivateKey: string(pem.EncodeToMemory(block)),
		HostPublicKey:  strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostPub))),
		HostKey:        hostPub,
		AuthorizedKey:  strings.TrimSpace(string(ssh.MarshalAuthorizedKey(job.PublicKey()))) + " job@understudy",
		JobSigner:      job,
	}
}

// BaseSpec returns a valid spec for h: common fields set by the suite, the rest by h.Configure.
func (h Harness) BaseSpec(t *testing.T, k Keys) programs.Spec {
	t.Helper()
	spec := programs.Spec{
		TrainID:        "tr-conformance-1",
		EndpointID:     "ep-42",
		Version:        "v3",
		Provider:       h.Provider,
		AuthorizedKey:  k.AuthorizedKey,
		HostPrivateKey: k.HostPrivateKey,
		Tags:           map[string]string{"team": "research", "cost_center": "cc-7"},
	}
	if h.Configure != nil {
		h.Configure(t, &spec)
	}
	return spec
}

// Run runs the conformance suite against h's program.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.NewResource == nil {
		t.Fatal("programtest: Harness.NewResource is required")
	}
	prog, err := programs.For(h.Provider)
	if err != nil {
		t.Fatalf("programs.For(%q): %v", h.Provider, err)
	}
	t.Run("Registered", func(t *testing.T) {
		if prog.Name() != h.Provider {
			t.Errorf("Name() = %q, want %q", prog.Name(), h.Provider)
		}
		found := false
		for _, n := range programs.Names() {
			found = found || n == h.Provider
		}
		if !found {
			t.Errorf("Names() = %v lacks %q", programs.Names(), h.Provider)
		}
	})
	t.Run("Validate", func(t *testing.T) { testValidate(t, h, prog) })
	t.Run("Deploy", func(t *testing.T) { testDeploy(t, h, prog) })
	t.Run("NotifiesOutputs", func(t *testing.T) {
		k := NewKeys(t)
		spec := h.BaseSpec(t, k)
		var got []programs.Outputs
		err := pulumi.RunErr(prog.FuncNotify(spec, func(o programs.Outputs) { got = append(got, o) }),
			pulumi.WithMocks("understudy-training", spec.TrainID, newMonitor(h)))
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 {
			t.Fatalf("ready called %d times, want once", len(got))
		}
		o := got[0]
		if o.Host == "" || o.Port < 1 || o.User == "" || o.InstanceID == "" || o.WorkDir == "" {
			t.Errorf("reported outputs incomplete: %+v", o)
		}
		if o.HostKey != k.HostPublicKey {
			t.Errorf("reported host key %q, want the public half of the spec's host key", o.HostKey)
		}
	})
	t.Run("InvalidSpecRegistersNothing", func(t *testing.T) {
		k := NewKeys(t)
		spec := h.BaseSpec(t, k)
		spec.AuthorizedKey = "nonsense"
		m := newMonitor(h)
		err := pulumi.RunErr(func(ctx *pulumi.Context) error {
			_, err := prog.Deploy(ctx, spec)
			return err
		}, pulumi.WithMocks("understudy-training", spec.TrainID, m))
		if err == nil {
			t.Fatal("Deploy of an invalid spec succeeded")
		}
		if n := len(m.registered()); n != 0 {
			t.Errorf("Deploy of an invalid spec registered %d resources", n)
		}
	})
}

func testValidate(t *testing.T, h Harness, prog *programs.Program) {
	k := NewKeys(t)
	if err := prog.Validate(h.BaseSpec(t, k)); err != nil {
		t.Fatalf("Validate of the base spec: %v", err)
	}
	other := NewKeys(t)
	_, rsaLike, _ := strings.Cut(other.HostPublicKey, " ")
	invalid := map[string]func(*programs.Spec){
		"empty TrainID":          func(s *programs.Spec) { s.TrainID = "" },
		"TrainID with slash":     func(s *programs.Spec) { s.TrainID = "a/b" },
		"other Provider":         func(s *programs.Spec) { s.Provider = s.Provider + "-other" },
		"AuthorizedKey garbage":  func(s *programs.Spec) { s.AuthorizedKey = "ssh-ed25519 " + rsaLike + "x!" },
		"AuthorizedKey two keys": func(s *programs.Spec) { s.AuthorizedKey = k.AuthorizedKey + "\n" + other.AuthorizedKey },
		"AuthorizedKey empty":    func(s *programs.Spec) { s.AuthorizedKey = "" },
		"HostPrivateKey public":  func(s *programs.Spec) { s.HostPrivateKey = k.HostPublicKey },
		"HostPrivateKey empty":   func(s *programs.Spec) { s.HostPrivateKey = "" },
		"empty tag key":          func(s *programs.Spec) { s.Tags = map[string]string{"": "x"} },
	}
	for name, mutate := range h.Invalid {
		invalid[name] = mutate
	}
	for name, mutate := range invalid {
		t.Run(name, func(t *testing.T) {
			spec := h.BaseSpec(t, k)
			mutate(&spec)
			err := prog.Validate(spec)
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			if code := job.CodeOf(err); code != job.CodeInvalidArgument {
				t.Errorf("code = %q, want %q (%v)", code, job.CodeInvalidArgument, err)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") || strings.Contains(job.MessageOf(err), "PRIVATE KEY") {
				t.Errorf("error quotes key material: %v", err)
			}
		})
	}
}

func testDeploy(t *testing.T, h Harness, prog *programs.Program) {
	k := NewKeys(t)
	spec := h.BaseSpec(t, k)
	m := newMonitor(h)
	var exports programs.Exports
	var got programs.Outputs
	done := make(chan struct{})
	err := pulumi.RunErr(func(ctx *pulumi.Context) error {
		e, err := prog.Deploy(ctx, spec)
		if err != nil {
			return err
		}
		exports = e
		pulumi.All(e.Host, e.Port, e.User, e.HostKey, e.InstanceID, e.WorkDir, e.GPU, e.HourlyPrice, e.LeaseFile, e.HostKeyTrust).ApplyT(func(vs []any) error {
			defer close(done)
			var ok bool
			fields := []struct {
				dst any
				v   any
			}{{&got.Host, vs[0]}, {&got.Port, vs[1]}, {&got.User, vs[2]}, {&got.HostKey, vs[3]},
				{&got.InstanceID, vs[4]}, {&got.WorkDir, vs[5]}, {&got.GPU, vs[6]}, {&got.HourlyPrice, vs[7]},
				{&got.LeaseFile, vs[8]}, {&got.HostKeyTrust, vs[9]}}
			for i, f := range fields {
				switch dst := f.dst.(type) {
				case *string:
					*dst, ok = f.v.(string)
				case *int:
					*dst, ok = f.v.(int)
				case *float64:
					*dst, ok = f.v.(float64)
				}
				if !ok {
					return fmt.Errorf("output %s is %T", programs.OutputNames()[i], f.v)
				}
			}
			return nil
		})
		return nil
	}, pulumi.WithMocks("understudy-training", spec.TrainID, m))
	if err != nil {
		t.Fatalf("run program: %v", err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("outputs never resolved")
	}

	t.Run("Outputs", func(t *testing.T) {
		if got.Host == "" {
			t.Error("host is empty")
		}
		if got.Port < 1 || got.Port > 65535 {
			t.Errorf("port = %d", got.Port)
		}
		if got.User == "" {
			t.Error("user is empty")
		}
		if got.HostKey != k.HostPublicKey {
			t.Errorf("hostKey = %q, want the public half of the spec's host key %q", got.HostKey, k.HostPublicKey)
		}
		if got.InstanceID == "" {
			t.Error("instanceId is empty")
		}
		if !path.IsAbs(got.WorkDir) {
			t.Errorf("workDir = %q, want an absolute path", got.WorkDir)
		}
		if got.GPU == "" {
			t.Error(`gpu is empty; want a model or "none"`)
		}
		if got.HourlyPrice < 0 {
			t.Errorf("hourlyPrice = %v", got.HourlyPrice)
		}
		if got.HostKeyTrust != programs.TrustInjected {
			t.Errorf("hostKeyTrust = %q, want %q: the service's host key must reach the machine", got.HostKeyTrust, programs.TrustInjected)
		}
		if got.LeaseFile != "" && !strings.HasPrefix(got.LeaseFile, strings.TrimSuffix(got.WorkDir, "/")+"/") {
			t.Errorf("leaseFile %q is not inside workDir %q", got.LeaseFile, got.WorkDir)
		}
	})
	t.Run("MachineRegistered", func(t *testing.T) {
		n := 0
		for _, r := range m.registered() {
			if r.TypeToken == prog.MachineType() {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d resources of the machine type %s registered, want 1", n, prog.MachineType())
		}
	})
	t.Run("NoSecretInOutputs", func(t *testing.T) {
		for name, v := range map[string]string{"host": got.Host, "user": got.User, "hostKey": got.HostKey,
			"instanceId": got.InstanceID, "workDir": got.WorkDir, "gpu": got.GPU} {
			if strings.Contains(v, "PRIVATE KEY") || strings.Contains(v, strings.TrimSpace(k.HostPrivateKey)) {
				t.Errorf("output %s holds the host private key", name)
			}
		}
		if pulumi.IsSecret(exports.HostKey) || pulumi.IsSecret(exports.Host) || pulumi.IsSecret(exports.Port) {
			t.Error("address or host key outputs are secret; the runner needs them in the clear")
		}
	})
	regs := m.registered()
	t.Run("SecretInputs", func(t *testing.T) {
		seen := false
		for _, r := range regs {
			for key, v := range r.Inputs {
				leaks, found := plainOccurrence(v, k.HostPrivateKey)
				if leaks {
					t.Errorf("%s %s: input %s holds the host private key outside a secret", r.TypeToken, r.Name, key)
				}
				seen = seen || found
			}
		}
		if !seen {
			t.Error("no resource received the host private key: the machine could not present the pinned host key")
		}
	})
	t.Run("Tags", func(t *testing.T) {
		want := programs.Tags(spec)
		tagged := 0
		for _, r := range regs {
			if !r.Custom || strings.HasPrefix(r.TypeToken, "pulumi:providers:") || contains(h.Untagged, r.TypeToken) {
				continue
			}
			tags, ok := r.Inputs["tags"]
			if !ok || !tags.IsObject() {
				t.Errorf("%s %s: no tags input", r.TypeToken, r.Name)
				continue
			}
			obj := tags.ObjectValue()
			for key, val := range want {
				v, ok := obj[resource.PropertyKey(key)]
				if !ok || !v.IsString() || v.StringValue() != val {
					t.Errorf("%s %s: tag %s = %v, want %q", r.TypeToken, r.Name, key, v, val)
				}
			}
			tagged++
		}
		if tagged == 0 {
			t.Error("no resource carries the job's tags")
		}
	})
	t.Run("InRepoProviderVersion", func(t *testing.T) {
		for _, r := range regs {
			if !strings.HasPrefix(r.TypeToken, "understudy:") {
				continue
			}
			if r.RegisterRPC == nil {
				t.Fatalf("%s: the mock monitor gave no register request", r.TypeToken)
			}
			if v := r.RegisterRPC.GetVersion(); v != version.Version {
				t.Errorf("%s %s registered with version %q, want %q: the engine would try to download the plugin",
					r.TypeToken, r.Name, v, version.Version)
			}
		}
	})
}

// plainOccurrence reports whether secret appears in v outside a secret value (leaks), and
// whether it appears at all (found).
func plainOccurrence(v resource.PropertyValue, secret string) (leaks, found bool) {
	secret = strings.TrimSpace(secret)
	var walk func(v resource.PropertyValue, inSecret bool)
	walk = func(v resource.PropertyValue, inSecret bool) {
		switch {
		case v.IsSecret():
			walk(v.SecretValue().Element, true)
		case v.IsOutput():
			walk(v.OutputValue().Element, inSecret || v.OutputValue().Secret)
		case v.IsString():
			if secret != "" && strings.Contains(v.StringValue(), secret) {
				found = true
				leaks = leaks || !inSecret
			}
		case v.IsArray():
			for _, e := range v.ArrayValue() {
				walk(e, inSecret)
			}
		case v.IsObject():
			for _, e := range v.ObjectValue() {
				walk(e, inSecret)
			}
		}
	}
	walk(v, false)
	return leaks, found
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// monitor is the mock resource monitor: it records every registration and answers with
// the harness's fakes.
type monitor struct {
	h    Harness
	mu   sync.Mutex
	regs []pulumi.MockResourceArgs
}

func newMonitor(h Harness) *monitor { return &monitor{h: h} }

func (m *monitor) NewResource(args pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	m.mu.Lock()
	m.regs = append(m.regs, args)
	m.mu.Unlock()
	return m.h.NewResource(args)
}

func (m *monitor) Call(args pulumi.MockCallArgs) (resource.PropertyMap, error) {
	if m.h.Call == nil {
		return nil, errors.New("programtest: no fake for call " + args.Token)
	}
	return m.h.Call(args)
}

func (m *monitor) registered() []pulumi.MockResourceArgs {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]pulumi.MockResourceArgs(nil), m.regs...)
}
