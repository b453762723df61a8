package programs_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"

	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/programs/programtest"
)

func TestLocalConformance(t *testing.T) {
	programtest.Run(t, localHarness)
}

var localHarness = programtest.Harness{
	Provider: "local",
	Configure: func(t *testing.T, spec *programs.Spec) {
		spec.Local = programs.LocalConfig{BaseDir: "/srv/understudy/workers"}
	},
	NewResource:  fakeLocalWorker,
	NoFirewall:   "the local worker's sshd listens on loopback only; there is no cloud firewall",
	NoSpot:       "the local worker runs on the service's own host, which no cloud interrupts",
	NoCloudNames: "the local worker is a directory on this host named by the train_id and a random suffix, not a cloud resource",
	BootData:     inputOf(programs.LocalWorkerType, "hostPrivateKey"),
	Invalid: map[string]func(*programs.Spec){
		"relative BaseDir":  func(s *programs.Spec) { s.Local.BaseDir = "workers" },
		"empty BaseDir":     func(s *programs.Spec) { s.Local.BaseDir = "" },
		"relative SSHDPath": func(s *programs.Spec) { s.Local.SSHDPath = "sshd" },
	},
}

// fakeLocalWorker answers as the in-repo provider's LocalWorker.Create does: the inputs,
// plus the address of the job's sshd, its directories and the host public key derived
// from the host private key.
func fakeLocalWorker(args pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	if args.TypeToken != programs.LocalWorkerType {
		return "", nil, errors.New("unexpected resource type " + args.TypeToken)
	}
	in := args.Inputs
	priv := in["hostPrivateKey"]
	if priv.IsSecret() {
		priv = priv.SecretValue().Element
	}
	if !priv.IsString() {
		return "", nil, errors.New("hostPrivateKey is not a string")
	}
	hostPub, err := programs.HostPublicKey(priv.StringValue())
	if err != nil {
		return "", nil, err
	}
	trainID := in["trainId"].StringValue()
	dir := filepath.Join(in["baseDir"].StringValue(), trainID+"-123456")
	state := in.Copy()
	if _, ok := state["sshdPath"]; !ok {
		state["sshdPath"] = resource.NewStringProperty("/usr/sbin/sshd")
	}
	state["host"] = resource.NewStringProperty("127.0.0.1")
	state["port"] = resource.NewNumberProperty(40222)
	state["user"] = resource.NewStringProperty("root")
	state["pid"] = resource.NewNumberProperty(4242)
	state["dir"] = resource.NewStringProperty(dir)
	state["workDir"] = resource.NewStringProperty(filepath.Join(dir, "work"))
	state["hostPublicKey"] = resource.NewStringProperty(hostPub)
	state["instanceId"] = resource.NewStringProperty("local-" + filepath.Base(dir))
	state["gpu"] = resource.NewStringProperty("none")
	state["running"] = resource.NewBoolProperty(true)
	if strings.Contains(hostPub, "PRIVATE") {
		return "", nil, errors.New("derived a private key")
	}
	return "local-" + filepath.Base(dir), state, nil
}
