// Package programtest is the conformance suite that every program in package programs must
// pass. A provider's test is one call: programtest.Run(t, programtest.Harness{…}).
//
// The suite runs the program under pulumi.WithMocks: the harness fakes what the provider
// answers to each resource registration, written from the provider's documented API shapes,
// and the suite checks the contract: the spec is validated with job.CodeInvalidArgument,
// every output is present and typed, the host key is the public half of the spec's host
// key, the job's tags reach every resource that takes labels, the host private key reaches
// resources only as a secret and never an output, the machine's boot data installs the
// spec's host key, a firewall admits SSH from the configured ranges only and nothing else,
// the spot choice reaches the machine, no two jobs share a cloud-side name (long train_ids
// sharing their first 90 characters, "Job_A" and "job-a"), and every resource carries the
// version of the plugin that serves it (the in-repo provider's, or the cloud SDK's).
//
// A check that does not apply to a program (no firewall of its own, no spot machines, no
// cloud-side names) needs the harness to say why, in NoFirewall, NoSpot or NoCloudNames;
// the suite logs the reason. There is no silent skip.
package programtest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
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
	// must receive the job's tags in its "tags" input, or the input LabelsInput names.
	Untagged []string
	// LabelsInput names, per resource type, the input that carries the job's labels where
	// it is not "tags" (a GCP instance's "tags" are network tags; its labels are "labels").
	LabelsInput map[string]string
	// Labels is how the provider spells the job's tags as labels (GCP lowercases and
	// shortens them); nil: as they are.
	Labels func(tags map[string]string) map[string]string
	// Invalid lists provider-specific mutations of a valid spec that Validate must refuse.
	Invalid map[string]func(spec *programs.Spec)

	// Ingress extracts the inbound rules that the program's firewall resources open. The
	// suite checks that every allowing rule admits tcp/22 only, from Spec.SSHIngressCIDRs
	// only, and that every configured range is admitted. Nil requires NoFirewall.
	Ingress func(regs []pulumi.MockResourceArgs) ([]IngressRule, error)
	// NoFirewall says why the program makes no firewall of its own.
	NoFirewall string

	// Spot reports whether the registered machine is an interruptible (spot) one. The
	// suite deploys with Machine.Spot true and false. Nil requires NoSpot.
	Spot func(regs []pulumi.MockResourceArgs) (bool, error)
	// NoSpot says why the program has no spot machines.
	NoSpot string

	// CloudNames maps every resource type that carries a name at the cloud to the input
	// paths that hold it ("name", "tags.Name", "osProfile.computerName"). The suite checks
	// that every such resource has its names and that two jobs never share one. Nil
	// requires NoCloudNames.
	CloudNames map[string][]string
	// NoCloudNames says why the program's resources carry no cloud-side names.
	NoCloudNames string

	// BootData extracts the value that reaches the machine at boot and installs its host
	// key: user data, a startup script, custom data, a pod's or worker's host key input.
	// The suite checks that it is secret and carries the spec's host private key (as PEM or
	// base64 of it). Required.
	BootData func(regs []pulumi.MockResourceArgs) (resource.PropertyValue, error)
	// DecodeBootData turns the boot data into text (Azure's custom data is base64); nil:
	// it is text.
	DecodeBootData func(string) (string, error)
}

// IngressRule is one inbound rule of a program's firewall.
type IngressRule struct {
	Resource string   // the resource that holds it, for messages
	Allow    bool     // false for a deny rule
	Protocol string   // "tcp", "udp", "icmp", "all"
	FromPort int      // first port; 0 with ToPort 65535 for all
	ToPort   int      // last port
	Sources  []string // address ranges the rule applies to
}

// IngressCIDRs are the ranges the suite's base spec admits SSH from.
var IngressCIDRs = []string{"198.51.100.7/32"}

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

		SSHIngressCIDRs: append([]string(nil), IngressCIDRs...),
	}
	if h.Configure != nil {
		h.Configure(t, &spec)
	}
	return spec
}

// Run runs the conformance suite against h's program.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.NewResource == nil || h.BootData == nil {
		t.Fatal("programtest: Harness.NewResource and Harness.BootData are required")
	}
	for field, ok := range map[string]bool{
		"Ingress or NoFirewall":      (h.Ingress == nil) != (h.NoFirewall == ""),
		"Spot or NoSpot":             (h.Spot == nil) != (h.NoSpot == ""),
		"CloudNames or NoCloudNames": (h.CloudNames == nil) != (h.NoCloudNames == ""),
	} {
		if !ok {
			t.Fatalf("programtest: Harness needs exactly one of %s", field)
		}
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
	t.Run("SSHIngress", func(t *testing.T) { testIngress(t, h, prog) })
	t.Run("Spot", func(t *testing.T) { testSpot(t, h, prog) })
	t.Run("UniqueNames", func(t *testing.T) { testNames(t, h, prog) })
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
	if h.Ingress != nil {
		invalid["no SSHIngressCIDRs"] = func(s *programs.Spec) { s.SSHIngressCIDRs = nil }
		invalid["SSHIngressCIDRs not a CIDR"] = func(s *programs.Spec) { s.SSHIngressCIDRs = []string{"198.51.100.7"} }
		invalid["SSHIngressCIDRs garbage"] = func(s *programs.Spec) { s.SSHIngressCIDRs = []string{"10.0.0.0/8", "anywhere"} }
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
		// Where the key reaches the machine is BootDataInstallsHostKey's to check; here
		// every place it appears in must be secret.
		for _, r := range regs {
			for key, v := range r.Inputs {
				if leaks, _ := plainOccurrence(v, k.HostPrivateKey); leaks {
					t.Errorf("%s %s: input %s holds the host private key outside a secret", r.TypeToken, r.Name, key)
				}
			}
		}
	})
	t.Run("Tags", func(t *testing.T) {
		want := programs.Tags(spec)
		if h.Labels != nil {
			want = h.Labels(want)
		}
		tagged := 0
		for _, r := range regs {
			if !r.Custom || strings.HasPrefix(r.TypeToken, "pulumi:providers:") || contains(h.Untagged, r.TypeToken) {
				continue
			}
			input := "tags"
			if in, ok := h.LabelsInput[r.TypeToken]; ok {
				input = in
			}
			tags, ok := r.Inputs[resource.PropertyKey(input)]
			if !ok || !tags.IsObject() {
				t.Errorf("%s %s: no %s input", r.TypeToken, r.Name, input)
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
	t.Run("BootDataInstallsHostKey", func(t *testing.T) {
		v, err := h.BootData(regs)
		if err != nil {
			t.Fatalf("extract boot data: %v", err)
		}
		text, secret, ok := StringValue(v)
		if !ok {
			t.Fatalf("boot data is %v, want a known string", v.TypeString())
		}
		if !secret {
			t.Error("boot data is not a secret, yet it holds the host private key")
		}
		if h.DecodeBootData != nil {
			if text, err = h.DecodeBootData(text); err != nil {
				t.Fatalf("decode boot data: %v", err)
			}
		}
		if !carriesKey(text, k.HostPrivateKey) {
			t.Error("boot data does not carry the spec's host private key: the machine could not present the pinned key")
		}
	})
	t.Run("PluginVersion", func(t *testing.T) {
		name, ver, ok := prog.Plugin()
		if !ok {
			t.Logf("%s uses only the in-repo provider (checked by InRepoProviderVersion)", h.Provider)
			return
		}
		n := 0
		for _, r := range regs {
			if !strings.HasPrefix(r.TypeToken, name+":") && r.TypeToken != "pulumi:providers:"+name {
				continue
			}
			n++
			if r.RegisterRPC == nil {
				t.Fatalf("%s: the mock monitor gave no register request", r.TypeToken)
			}
			if v := r.RegisterRPC.GetVersion(); v != ver {
				t.Errorf("%s %s registered with version %q, want %q: the engine would ask for a plugin that is not installed",
					r.TypeToken, r.Name, v, ver)
			}
		}
		if n == 0 {
			t.Errorf("no resource of plugin %s registered", name)
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

// deployRegs runs h's program for spec under mocks and returns what it registered.
func deployRegs(t *testing.T, h Harness, prog *programs.Program, spec programs.Spec) []pulumi.MockResourceArgs {
	t.Helper()
	m := newMonitor(h)
	if err := pulumi.RunErr(prog.Func(spec), pulumi.WithMocks("understudy-training", spec.TrainID, m)); err != nil {
		t.Fatalf("run program for %s: %v", spec.TrainID, err)
	}
	return m.registered()
}

func testIngress(t *testing.T, h Harness, prog *programs.Program) {
	if h.Ingress == nil {
		t.Logf("not applicable to %s: %s", h.Provider, h.NoFirewall)
		return
	}
	spec := h.BaseSpec(t, NewKeys(t))
	spec.SSHIngressCIDRs = []string{"198.51.100.7/32", "203.0.113.0/24"}
	rules, err := h.Ingress(deployRegs(t, h, prog, spec))
	if err != nil {
		t.Fatalf("extract ingress rules: %v", err)
	}
	admitted := map[string]bool{}
	for _, r := range rules {
		if !r.Allow {
			continue
		}
		if r.Protocol != "tcp" || r.FromPort != 22 || r.ToPort != 22 {
			t.Errorf("%s admits %s ports %d-%d; want tcp/22 only", r.Resource, r.Protocol, r.FromPort, r.ToPort)
		}
		if len(r.Sources) == 0 {
			t.Errorf("%s admits from no stated range (anywhere?)", r.Resource)
		}
		for _, src := range r.Sources {
			if !contains(spec.SSHIngressCIDRs, src) {
				t.Errorf("%s admits %s, which is not among SSHIngressCIDRs %v", r.Resource, src, spec.SSHIngressCIDRs)
			}
			admitted[src] = true
		}
	}
	for _, c := range spec.SSHIngressCIDRs {
		if !admitted[c] {
			t.Errorf("no rule admits SSH from %s: the service could not connect", c)
		}
	}
}

func testSpot(t *testing.T, h Harness, prog *programs.Program) {
	if h.Spot == nil {
		t.Logf("not applicable to %s: %s", h.Provider, h.NoSpot)
		return
	}
	for _, want := range []bool{false, true} {
		spec := h.BaseSpec(t, NewKeys(t))
		spec.Machine.Spot = want
		got, err := h.Spot(deployRegs(t, h, prog, spec))
		if err != nil {
			t.Fatalf("spot %v: extract: %v", want, err)
		}
		if got != want {
			t.Errorf("Machine.Spot %v: the registered machine is spot: %v", want, got)
		}
	}
}

func testNames(t *testing.T, h Harness, prog *programs.Program) {
	if h.CloudNames == nil {
		t.Logf("not applicable to %s: %s", h.Provider, h.NoCloudNames)
		return
	}
	if _, ok := h.CloudNames[prog.MachineType()]; !ok {
		t.Errorf("CloudNames lacks the machine type %s", prog.MachineType())
	}
	common := "tr-" + strings.Repeat("0123456789", 8) + "abcdefg" // 90 characters
	for _, pair := range [][2]string{{common + "-first-job", common + "-other-job"}, {"Job_A", "job-a"}} {
		var sets [2]map[string]string
		for i, id := range pair {
			spec := h.BaseSpec(t, NewKeys(t))
			spec.TrainID = id
			sets[i] = map[string]string{}
			for _, r := range deployRegs(t, h, prog, spec) {
				paths, ok := h.CloudNames[r.TypeToken]
				if !ok {
					continue
				}
				for _, p := range paths {
					name, ok := lookupPath(r.Inputs, p)
					if !ok || name == "" {
						t.Errorf("%s: %s %s has no name at %s", id, r.TypeToken, r.Name, p)
						continue
					}
					sets[i][name] = r.TypeToken + " " + r.Name
				}
			}
			if len(sets[i]) == 0 {
				t.Errorf("%s: no resource carries a cloud-side name", id)
			}
		}
		for name, res := range sets[0] {
			if other, dup := sets[1][name]; dup {
				t.Errorf("jobs %q and %q share the name %q (%s, %s)", pair[0], pair[1], name, res, other)
			}
		}
	}
}

// lookupPath reads the string at a dotted path of inputs ("osProfile.computerName").
func lookupPath(m resource.PropertyMap, path string) (string, bool) {
	key, rest, nested := strings.Cut(path, ".")
	v, ok := m[resource.PropertyKey(key)]
	if !ok {
		return "", false
	}
	if v.IsSecret() {
		v = v.SecretValue().Element
	}
	if nested {
		if !v.IsObject() {
			return "", false
		}
		return lookupPath(v.ObjectValue(), rest)
	}
	s, _, ok := StringValue(v)
	return s, ok
}

// StringValue unwraps a known string from a property value, reporting whether it was
// secret (a secret, or a secret output).
func StringValue(v resource.PropertyValue) (s string, secret, ok bool) {
	for {
		switch {
		case v.IsSecret():
			secret = true
			v = v.SecretValue().Element
		case v.IsOutput():
			o := v.OutputValue()
			if !o.Known {
				return "", secret, false
			}
			secret = secret || o.Secret
			v = o.Element
		case v.IsString():
			return v.StringValue(), secret, true
		default:
			return "", secret, false
		}
	}
}

// carriesKey reports whether text carries the PEM private key: as it is, base64-encoded,
// or line by line (a YAML block, indented).
func carriesKey(text, privatePEM string) bool {
	priv := strings.TrimSpace(privatePEM)
	if priv == "" {
		return false
	}
	if strings.Contains(text, priv) ||
		strings.Contains(text, base64.StdEncoding.EncodeToString([]byte(priv+"\n"))) ||
		strings.Contains(text, base64.StdEncoding.EncodeToString([]byte(priv))) {
		return true
	}
	rest := text
	for _, line := range strings.Split(priv, "\n") {
		i := strings.Index(rest, strings.TrimSpace(line))
		if i < 0 {
			return false
		}
		rest = rest[i+len(strings.TrimSpace(line)):]
	}
	return true
}

// plainOccurrence reports whether secret (a PEM key, in any form carriesKey knows) appears
// in v outside a secret value (leaks), and whether it appears at all (found).
func plainOccurrence(v resource.PropertyValue, secret string) (leaks, found bool) {
	var walk func(v resource.PropertyValue, inSecret bool)
	walk = func(v resource.PropertyValue, inSecret bool) {
		switch {
		case v.IsSecret():
			walk(v.SecretValue().Element, true)
		case v.IsOutput():
			walk(v.OutputValue().Element, inSecret || v.OutputValue().Secret)
		case v.IsString():
			if carriesKey(v.StringValue(), secret) {
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
