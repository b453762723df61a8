package programs_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	"golang.org/x/mod/modfile"

	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/programs/programtest"
)

// The fakes below answer as the clouds' Pulumi providers do, from the documented output
// shapes: the inputs echoed, plus what the cloud computes (ids, addresses, states).

func TestAWSConformance(t *testing.T) { programtest.Run(t, awsHarness) }

func TestGCPConformance(t *testing.T) { programtest.Run(t, gcpHarness) }

func TestAzureConformance(t *testing.T) { programtest.Run(t, azureHarness) }

const testSubscription = "6f2b1c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

var awsHarness = programtest.Harness{
	Provider: "aws",
	Configure: func(t *testing.T, spec *programs.Spec) {
		spec.AWS = programs.AWSConfig{Region: "us-east-1"}
		spec.LeaseSeconds = 900
	},
	NewResource: fakeAWS,
	Call:        fakeAWSCall,
	Ingress:     awsIngress,
	Spot: func(regs []pulumi.MockResourceArgs) (bool, error) {
		in, err := only(regs, programs.AWSInstanceType)
		if err != nil {
			return false, err
		}
		s, _ := strAt(in, "instanceMarketOptions.marketType")
		return s == "spot", nil
	},
	CloudNames: map[string][]string{
		programs.AWSKeyPairType:       {"keyName", "tags.Name"},
		programs.AWSSecurityGroupType: {"name", "tags.Name"},
		programs.AWSInstanceType:      {"tags.Name"},
	},
	BootData: inputOf(programs.AWSInstanceType, "userData"),
	Invalid: map[string]func(*programs.Spec){
		"no region":            func(s *programs.Spec) { s.AWS.Region = "" },
		"bad region":           func(s *programs.Spec) { s.AWS.Region = "US East" },
		"on-demand fallback":   func(s *programs.Spec) { s.Machine = programs.MachineOptions{Spot: true, OnDemandFallback: true} },
		"gpu type not EC2":     func(s *programs.Spec) { s.Machine.GPUType = "NVIDIA A10G" },
		"bad default type":     func(s *programs.Spec) { s.AWS.InstanceType = "g5 xlarge" },
		"bad AMI":              func(s *programs.Spec) { s.AWS.AMI = "ubuntu-22.04" },
		"subnet without VPC":   func(s *programs.Spec) { s.AWS.SubnetID = "subnet-0123456789abcdef0" },
		"relative work dir":    func(s *programs.Spec) { s.AWS.WorkDir = "understudy" },
		"negative price":       func(s *programs.Spec) { s.AWS.HourlyPrice = -1 },
		"user with shell meta": func(s *programs.Spec) { s.AWS.User = "ubuntu;rm" },
		"disk too big":         func(s *programs.Spec) { s.AWS.DiskGB = 100000 },
	},
}

var gcpHarness = programtest.Harness{
	Provider: "gcp",
	Configure: func(t *testing.T, spec *programs.Spec) {
		spec.GCP = programs.GCPConfig{Project: "understudy-test", Zone: "us-central1-a"}
		spec.LeaseSeconds = 900
	},
	NewResource: fakeGCP,
	// A firewall rule takes no labels.
	Untagged:    []string{programs.GCPFirewallType},
	LabelsInput: map[string]string{programs.GCPInstanceType: "labels"},
	Labels:      programs.GCPLabels,
	Ingress:     gcpIngress,
	Spot: func(regs []pulumi.MockResourceArgs) (bool, error) {
		in, err := only(regs, programs.GCPInstanceType)
		if err != nil {
			return false, err
		}
		s, _ := strAt(in, "scheduling.provisioningModel")
		return s == "SPOT", nil
	},
	CloudNames: map[string][]string{
		programs.GCPInstanceType: {"name"},
		programs.GCPFirewallType: {"name"},
	},
	BootData: inputOf(programs.GCPInstanceType, "metadataStartupScript"),
	Invalid: map[string]func(*programs.Spec){
		"no project":         func(s *programs.Spec) { s.GCP.Project = "" },
		"no zone":            func(s *programs.Spec) { s.GCP.Zone = "" },
		"region not zone":    func(s *programs.Spec) { s.GCP.Zone = "us-central1" },
		"on-demand fallback": func(s *programs.Spec) { s.Machine = programs.MachineOptions{Spot: true, OnDemandFallback: true} },
		"gpu type not GCP":   func(s *programs.Spec) { s.Machine.GPUType = "NVIDIA L4" },
		"bad machine type":   func(s *programs.Spec) { s.GCP.MachineType = "G2 standard" },
		"only ipv6 ingress":  func(s *programs.Spec) { s.SSHIngressCIDRs = []string{"2001:db8::/32"} },
		"relative work dir":  func(s *programs.Spec) { s.GCP.WorkDir = "understudy" },
		"too many GPUs":      func(s *programs.Spec) { s.GCP.GPUCount = 17 },
	},
}

var azureHarness = programtest.Harness{
	Provider: "azure",
	Configure: func(t *testing.T, spec *programs.Spec) {
		spec.Azure = programs.AzureConfig{SubscriptionID: testSubscription, Location: "eastus"}
		spec.LeaseSeconds = 900
	},
	NewResource: fakeAzure,
	Call:        fakeAzureCall,
	// A subnet takes no tags.
	Untagged: []string{programs.AzureSubnetType},
	Ingress:  azureIngress,
	Spot: func(regs []pulumi.MockResourceArgs) (bool, error) {
		in, err := only(regs, programs.AzureVirtualMachineType)
		if err != nil {
			return false, err
		}
		s, _ := strAt(in, "priority")
		return s == "Spot", nil
	},
	CloudNames: map[string][]string{
		programs.AzureResourceGroupType:    {"resourceGroupName"},
		programs.AzureVirtualNetworkType:   {"virtualNetworkName"},
		programs.AzureSubnetType:           {"subnetName"},
		programs.AzureSecurityGroupType:    {"networkSecurityGroupName"},
		programs.AzurePublicIPAddressType:  {"publicIpAddressName"},
		programs.AzureNetworkInterfaceType: {"networkInterfaceName"},
		programs.AzureVirtualMachineType:   {"vmName", "osProfile.computerName", "storageProfile.osDisk.name"},
		programs.AzureShutdownScheduleType: {"name"},
	},
	BootData: func(regs []pulumi.MockResourceArgs) (resource.PropertyValue, error) {
		in, err := only(regs, programs.AzureVirtualMachineType)
		if err != nil {
			return resource.PropertyValue{}, err
		}
		osp := in["osProfile"]
		if !osp.IsObject() {
			return resource.PropertyValue{}, errors.New("virtual machine has no osProfile")
		}
		return osp.ObjectValue()["customData"], nil
	},
	DecodeBootData: func(s string) (string, error) {
		b, err := base64.StdEncoding.DecodeString(s)
		return string(b), err
	},
	Invalid: map[string]func(*programs.Spec){
		"no subscription":     func(s *programs.Spec) { s.Azure.SubscriptionID = "" },
		"subscription name":   func(s *programs.Spec) { s.Azure.SubscriptionID = "my-subscription" },
		"no location":         func(s *programs.Spec) { s.Azure.Location = "" },
		"on-demand fallback":  func(s *programs.Spec) { s.Machine = programs.MachineOptions{Spot: true, OnDemandFallback: true} },
		"gpu type not a size": func(s *programs.Spec) { s.Machine.GPUType = "T4" },
		"image not a URN":     func(s *programs.Spec) { s.Azure.Image = "ubuntu-22.04" },
		"reserved user":       func(s *programs.Spec) { s.Azure.User = "admin" },
		"operator key no group": func(s *programs.Spec) {
			s.Azure.OperatorKeyName = "ops"
		},
		"relative work dir": func(s *programs.Spec) { s.Azure.WorkDir = "understudy" },
		"only ipv6 ingress": func(s *programs.Spec) { s.SSHIngressCIDRs = []string{"2001:db8::/32"} },
	},
}

// --- helpers over registered resources ---

func only(regs []pulumi.MockResourceArgs, typ string) (resource.PropertyMap, error) {
	var found []resource.PropertyMap
	for _, r := range regs {
		if r.TypeToken == typ {
			found = append(found, r.Inputs)
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("%d resources of %s registered, want 1", len(found), typ)
	}
	return found[0], nil
}

// at reads the value at a dotted path of a property map.
func at(m resource.PropertyMap, path string) (resource.PropertyValue, bool) {
	key, rest, nested := strings.Cut(path, ".")
	v, ok := m[resource.PropertyKey(key)]
	if !ok {
		return resource.PropertyValue{}, false
	}
	for v.IsSecret() {
		v = v.SecretValue().Element
	}
	if !nested {
		return v, true
	}
	if !v.IsObject() {
		return resource.PropertyValue{}, false
	}
	return at(v.ObjectValue(), rest)
}

func strAt(m resource.PropertyMap, path string) (string, bool) {
	v, ok := at(m, path)
	if !ok || !v.IsString() {
		return "", false
	}
	return v.StringValue(), true
}

func stringList(v resource.PropertyValue) []string {
	if !v.IsArray() {
		return nil
	}
	var out []string
	for _, e := range v.ArrayValue() {
		if e.IsString() {
			out = append(out, e.StringValue())
		}
	}
	return out
}

func number(v resource.PropertyValue) int {
	if v.IsNumber() {
		return int(v.NumberValue())
	}
	return -1
}

// --- AWS ---

const awsAccount = "123456789012"

func fakeAWS(args pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	state := args.Inputs.Copy()
	switch args.TypeToken {
	case "pulumi:providers:aws":
		return "aws-provider-id", state, nil
	case programs.AWSKeyPairType:
		name := args.Inputs["keyName"].StringValue()
		state["keyPairId"] = resource.NewStringProperty("key-0a1b2c3d4e5f60718")
		state["keyType"] = resource.NewStringProperty("ed25519")
		state["fingerprint"] = resource.NewStringProperty("f0:9e:8d:7c")
		state["arn"] = resource.NewStringProperty("arn:aws:ec2:us-east-1:" + awsAccount + ":key-pair/" + name)
		return name, state, nil
	case programs.AWSSecurityGroupType:
		id := "sg-0a1b2c3d4e5f60718"
		state["arn"] = resource.NewStringProperty("arn:aws:ec2:us-east-1:" + awsAccount + ":security-group/" + id)
		state["ownerId"] = resource.NewStringProperty(awsAccount)
		if _, ok := state["vpcId"]; !ok {
			state["vpcId"] = resource.NewStringProperty("vpc-0a1b2c3d")
		}
		return id, state, nil
	case programs.AWSInstanceType:
		id := "i-0a1b2c3d4e5f60718"
		lifecycle := ""
		if s, _ := strAt(args.Inputs, "instanceMarketOptions.marketType"); s == "spot" {
			lifecycle = "spot"
		}
		state["arn"] = resource.NewStringProperty("arn:aws:ec2:us-east-1:" + awsAccount + ":instance/" + id)
		state["publicIp"] = resource.NewStringProperty("203.0.113.25")
		state["publicDns"] = resource.NewStringProperty("ec2-203-0-113-25.compute-1.amazonaws.com")
		state["privateIp"] = resource.NewStringProperty("172.31.5.6")
		state["instanceState"] = resource.NewStringProperty("running")
		state["instanceLifecycle"] = resource.NewStringProperty(lifecycle)
		state["availabilityZone"] = resource.NewStringProperty("us-east-1a")
		state["primaryNetworkInterfaceId"] = resource.NewStringProperty("eni-0a1b2c3d")
		return id, state, nil
	}
	return "", nil, errors.New("unexpected resource type " + args.TypeToken)
}

func fakeAWSCall(args pulumi.MockCallArgs) (resource.PropertyMap, error) {
	if args.Token != "aws:ec2/getAmi:getAmi" {
		return nil, errors.New("unexpected call " + args.Token)
	}
	owners := stringList(args.Args["owners"])
	if len(owners) != 1 || owners[0] != "amazon" || !args.Args["mostRecent"].BoolValue() {
		return nil, fmt.Errorf("ami lookup %v: want the newest AMI owned by amazon", args.Args)
	}
	return resource.PropertyMap{
		"id":           resource.NewStringProperty("ami-0fedcba9876543210"),
		"imageId":      resource.NewStringProperty("ami-0fedcba9876543210"),
		"name":         resource.NewStringProperty("Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20250920"),
		"architecture": resource.NewStringProperty("x86_64"),
		"ownerId":      resource.NewStringProperty("898082745236"),
		"state":        resource.NewStringProperty("available"),
		"owners":       args.Args["owners"],
		"filters":      args.Args["filters"],
		"mostRecent":   resource.NewBoolProperty(true),
	}, nil
}

func awsIngress(regs []pulumi.MockResourceArgs) ([]programtest.IngressRule, error) {
	var rules []programtest.IngressRule
	for _, r := range regs {
		switch r.TypeToken {
		case programs.AWSSecurityGroupType:
			in, ok := at(r.Inputs, "ingress")
			if !ok {
				continue
			}
			for _, e := range in.ArrayValue() {
				o := e.ObjectValue()
				proto := o["protocol"].StringValue()
				from, to := number(o["fromPort"]), number(o["toPort"])
				if proto == "-1" || proto == "all" {
					proto, from, to = "all", 0, 65535
				}
				rules = append(rules, programtest.IngressRule{Resource: r.TypeToken + " " + r.Name, Allow: true,
					Protocol: proto, FromPort: from, ToPort: to,
					Sources: append(stringList(o["cidrBlocks"]), stringList(o["ipv6CidrBlocks"])...)})
			}
		case "aws:ec2/securityGroupRule:SecurityGroupRule", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule":
			return nil, errors.New("the harness does not read " + r.TypeToken + " resources")
		}
	}
	return rules, nil
}

// --- GCP ---

func fakeGCP(args pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	state := args.Inputs.Copy()
	name, _ := strAt(args.Inputs, "name")
	switch args.TypeToken {
	case programs.GCPFirewallType:
		id := "projects/understudy-test/global/firewalls/" + name
		state["selfLink"] = resource.NewStringProperty("https://www.googleapis.com/compute/v1/" + id)
		state["creationTimestamp"] = resource.NewStringProperty("2025-01-01T00:00:00.000-08:00")
		return id, state, nil
	case programs.GCPInstanceType:
		id := "projects/understudy-test/zones/us-central1-a/instances/" + name
		nis, ok := at(args.Inputs, "networkInterfaces")
		if !ok || !nis.IsArray() || len(nis.ArrayValue()) == 0 {
			return "", nil, errors.New("instance without a network interface")
		}
		var out []resource.PropertyValue
		for i, ni := range nis.ArrayValue() {
			o := ni.ObjectValue().Copy()
			o["networkIp"] = resource.NewStringProperty("10.128.0." + strconv.Itoa(10+i))
			o["name"] = resource.NewStringProperty("nic" + strconv.Itoa(i))
			var acs []resource.PropertyValue
			if ac, ok := o["accessConfigs"]; ok && ac.IsArray() {
				for _, a := range ac.ArrayValue() {
					ao := resource.PropertyMap{}
					if a.IsObject() {
						ao = a.ObjectValue().Copy()
					}
					ao["natIp"] = resource.NewStringProperty("34.122.10.20")
					ao["networkTier"] = resource.NewStringProperty("PREMIUM")
					acs = append(acs, resource.NewObjectProperty(ao))
				}
			}
			o["accessConfigs"] = resource.NewArrayProperty(acs)
			out = append(out, resource.NewObjectProperty(o))
		}
		state["networkInterfaces"] = resource.NewArrayProperty(out)
		state["instanceId"] = resource.NewStringProperty("5823174659120034817")
		state["currentStatus"] = resource.NewStringProperty("RUNNING")
		state["selfLink"] = resource.NewStringProperty("https://www.googleapis.com/compute/v1/" + id)
		state["cpuPlatform"] = resource.NewStringProperty("Intel Cascade Lake")
		return id, state, nil
	}
	return "", nil, errors.New("unexpected resource type " + args.TypeToken)
}

func gcpIngress(regs []pulumi.MockResourceArgs) ([]programtest.IngressRule, error) {
	var rules []programtest.IngressRule
	for _, r := range regs {
		if r.TypeToken != programs.GCPFirewallType {
			continue
		}
		if d, _ := strAt(r.Inputs, "direction"); d != "" && d != "INGRESS" {
			continue
		}
		sources := stringList(r.Inputs["sourceRanges"])
		for key, allow := range map[resource.PropertyKey]bool{"allows": true, "denies": false} {
			list, ok := r.Inputs[key]
			if !ok {
				continue
			}
			for _, e := range list.ArrayValue() {
				o := e.ObjectValue()
				proto := o["protocol"].StringValue()
				ports := stringList(o["ports"])
				if len(ports) == 0 {
					rules = append(rules, programtest.IngressRule{Resource: r.Name, Allow: allow, Protocol: proto,
						FromPort: 0, ToPort: 65535, Sources: sources})
				}
				for _, p := range ports {
					lo, hi, _ := strings.Cut(p, "-")
					from, _ := strconv.Atoi(lo)
					to := from
					if hi != "" {
						to, _ = strconv.Atoi(hi)
					}
					rules = append(rules, programtest.IngressRule{Resource: r.Name, Allow: allow, Protocol: proto,
						FromPort: from, ToPort: to, Sources: sources})
				}
			}
		}
	}
	return rules, nil
}

// --- Azure ---

func azureID(group, provider, kind, name string) string {
	return "/subscriptions/" + testSubscription + "/resourceGroups/" + group + "/providers/" + provider + "/" + kind + "/" + name
}

func fakeAzure(args pulumi.MockResourceArgs) (string, resource.PropertyMap, error) {
	state := args.Inputs.Copy()
	group, _ := strAt(args.Inputs, "resourceGroupName")
	name := func(key string) string {
		s, _ := strAt(args.Inputs, key)
		state["name"] = resource.NewStringProperty(s)
		state["provisioningState"] = resource.NewStringProperty("Succeeded")
		return s
	}
	switch args.TypeToken {
	case "pulumi:providers:azure-native":
		return "azure-native-provider-id", state, nil
	case programs.AzureResourceGroupType:
		n := name("resourceGroupName")
		return "/subscriptions/" + testSubscription + "/resourceGroups/" + n, state, nil
	case programs.AzureVirtualNetworkType:
		return azureID(group, "Microsoft.Network", "virtualNetworks", name("virtualNetworkName")), state, nil
	case programs.AzureSubnetType:
		vnet, _ := strAt(args.Inputs, "virtualNetworkName")
		return azureID(group, "Microsoft.Network", "virtualNetworks", vnet) + "/subnets/" + name("subnetName"), state, nil
	case programs.AzureSecurityGroupType:
		return azureID(group, "Microsoft.Network", "networkSecurityGroups", name("networkSecurityGroupName")), state, nil
	case programs.AzurePublicIPAddressType:
		state["ipAddress"] = resource.NewStringProperty("20.121.5.6")
		return azureID(group, "Microsoft.Network", "publicIPAddresses", name("publicIpAddressName")), state, nil
	case programs.AzureNetworkInterfaceType:
		state["macAddress"] = resource.NewStringProperty("00-0D-3A-1B-2C-3D")
		return azureID(group, "Microsoft.Network", "networkInterfaces", name("networkInterfaceName")), state, nil
	case programs.AzureVirtualMachineType:
		state["vmId"] = resource.NewStringProperty("0b8b0a3e-5c1d-4f2a-9e7b-1c2d3e4f5a6b")
		state["timeCreated"] = resource.NewStringProperty("2025-01-01T00:00:00Z")
		return azureID(group, "Microsoft.Compute", "virtualMachines", name("vmName")), state, nil
	case programs.AzureShutdownScheduleType:
		return azureID(group, "Microsoft.DevTestLab", "schedules", name("name")), state, nil
	}
	return "", nil, errors.New("unexpected resource type " + args.TypeToken)
}

const operatorKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq7PIv6Z0lLqpPP7Y+N2w5NkTb7d6RPMUY1y0bDdEUw ops@example"

func fakeAzureCall(args pulumi.MockCallArgs) (resource.PropertyMap, error) {
	if args.Token != "azure-native:compute:getSshPublicKey" {
		return nil, errors.New("unexpected call " + args.Token)
	}
	group := args.Args["resourceGroupName"].StringValue()
	name := args.Args["sshPublicKeyName"].StringValue()
	return resource.PropertyMap{
		"id":        resource.NewStringProperty(azureID(group, "Microsoft.Compute", "sshPublicKeys", name)),
		"name":      resource.NewStringProperty(name),
		"location":  resource.NewStringProperty("eastus"),
		"type":      resource.NewStringProperty("Microsoft.Compute/sshPublicKeys"),
		"publicKey": resource.NewStringProperty(operatorKey),
	}, nil
}

func azureIngress(regs []pulumi.MockResourceArgs) ([]programtest.IngressRule, error) {
	var rules []programtest.IngressRule
	for _, r := range regs {
		switch r.TypeToken {
		case programs.AzureSecurityGroupType:
			list, ok := r.Inputs["securityRules"]
			if !ok {
				continue
			}
			for _, e := range list.ArrayValue() {
				o := e.ObjectValue()
				if o["direction"].StringValue() != "Inbound" {
					continue
				}
				proto := strings.ToLower(o["protocol"].StringValue())
				if proto == "*" {
					proto = "all"
				}
				from, to := 0, 65535
				if p, ok := o["destinationPortRange"]; ok && p.IsString() && p.StringValue() != "*" {
					lo, hi, _ := strings.Cut(p.StringValue(), "-")
					from, _ = strconv.Atoi(lo)
					to = from
					if hi != "" {
						to, _ = strconv.Atoi(hi)
					}
				}
				sources := stringList(o["sourceAddressPrefixes"])
				if p, ok := o["sourceAddressPrefix"]; ok && p.IsString() {
					sources = append(sources, p.StringValue())
				}
				rules = append(rules, programtest.IngressRule{Resource: r.Name + "/" + o["name"].StringValue(),
					Allow: o["access"].StringValue() == "Allow", Protocol: proto, FromPort: from, ToPort: to, Sources: sources})
			}
		case "azure-native:network:SecurityRule":
			return nil, errors.New("the harness does not read " + r.TypeToken + " resources")
		}
	}
	return rules, nil
}

// --- provider-specific behaviour ---

// deployOutputs runs h's program for the base spec changed by mutate, and returns what it
// registered and the outputs it reported.
func deployOutputs(t *testing.T, h programtest.Harness, mutate func(*programs.Spec)) (*recorder, programs.Outputs) {
	t.Helper()
	spec := h.BaseSpec(t, programtest.NewKeys(t))
	mutate(&spec)
	prog, err := programs.For(h.Provider)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{fake: h.NewResource, call: h.Call}
	var out programs.Outputs
	if err := pulumi.RunErr(prog.FuncNotify(spec, func(o programs.Outputs) { out = o }),
		pulumi.WithMocks("understudy-training", spec.TrainID, rec)); err != nil {
		t.Fatal(err)
	}
	return rec, out
}

func expect[T comparable](t *testing.T, in resource.PropertyMap, path string, w T) {
	t.Helper()
	v, ok := at(in, path)
	if !ok {
		t.Errorf("%s missing, want %v", path, w)
		return
	}
	var got any
	switch {
	case v.IsString():
		got = v.StringValue()
	case v.IsBool():
		got = v.BoolValue()
	case v.IsNumber():
		got = v.NumberValue()
	}
	if g, ok := got.(T); !ok || g != w {
		t.Errorf("%s = %v, want %v", path, got, w)
	}
}

func TestAWSInstance(t *testing.T) {
	rec, out := deployOutputs(t, awsHarness, func(s *programs.Spec) { s.Machine.Spot = true })
	in := rec.inputs(t, programs.AWSInstanceType)
	expect(t, in, "instanceMarketOptions.marketType", "spot")
	expect(t, in, "instanceMarketOptions.spotOptions.spotInstanceType", "one-time")
	expect(t, in, "instanceMarketOptions.spotOptions.instanceInterruptionBehavior", "terminate")
	expect(t, in, "instanceInitiatedShutdownBehavior", "terminate")
	expect(t, in, "rootBlockDevice.volumeType", "gp3")
	expect(t, in, "rootBlockDevice.deleteOnTermination", true)
	expect(t, in, "rootBlockDevice.volumeSize", 100.0)
	expect(t, in, "ami", "ami-0fedcba9876543210")
	expect(t, in, "instanceType", programs.AWSDefaultInstanceType)
	expect(t, in, "keyName", "understudy-tr-conformance-1")
	expect(t, in, "tags.Name", "understudy-tr-conformance-1")
	sg := rec.inputs(t, programs.AWSSecurityGroupType)
	egress, _ := at(sg, "egress")
	if !egress.IsArray() || len(egress.ArrayValue()) != 1 {
		t.Fatalf("egress = %v, want one explicit all-outbound rule", egress)
	}
	e := egress.ArrayValue()[0].ObjectValue()
	if e["protocol"].StringValue() != "-1" || strings.Join(stringList(e["cidrBlocks"]), ",") != "0.0.0.0/0" {
		t.Errorf("egress rule %v, want all protocols to 0.0.0.0/0", e)
	}
	wantOut := programs.Outputs{Host: "203.0.113.25", Port: 22, User: "ubuntu", InstanceID: "i-0a1b2c3d4e5f60718",
		WorkDir: "/home/ubuntu/understudy/tr-conformance-1", GPU: "1x NVIDIA A10G (24 GB)", HourlyPrice: 1.006,
		LeaseFile: "/home/ubuntu/understudy/tr-conformance-1/lease", HostKeyTrust: programs.TrustInjected}
	out.HostKey = ""
	if out != wantOut {
		t.Errorf("outputs = %+v, want %+v", out, wantOut)
	}

	rec, out = deployOutputs(t, awsHarness, func(s *programs.Spec) {
		s.Machine.GPUType = "p5.48xlarge"
		s.AWS.AMI = "ami-0123456789abcdef0"
		s.AWS.SubnetID = "subnet-0123456789abcdef0"
		s.AWS.VPCID = "vpc-0123456789abcdef0"
		s.AWS.HourlyPrice = 55.04
		s.LeaseSeconds = 0
	})
	in = rec.inputs(t, programs.AWSInstanceType)
	if _, ok := in["instanceMarketOptions"]; ok {
		t.Error("an on-demand instance has instanceMarketOptions")
	}
	expect(t, in, "ami", "ami-0123456789abcdef0")
	expect(t, in, "subnetId", "subnet-0123456789abcdef0")
	expect(t, rec.inputs(t, programs.AWSSecurityGroupType), "vpcId", "vpc-0123456789abcdef0")
	if out.GPU != "8x NVIDIA H100 (80 GB)" || out.HourlyPrice != 55.04 || out.LeaseFile != "" {
		t.Errorf("outputs = %+v", out)
	}
}

func TestGCPInstance(t *testing.T) {
	rec, out := deployOutputs(t, gcpHarness, func(s *programs.Spec) { s.Machine.Spot = true })
	in := rec.inputs(t, programs.GCPInstanceType)
	expect(t, in, "scheduling.provisioningModel", "SPOT")
	expect(t, in, "scheduling.preemptible", true)
	expect(t, in, "scheduling.automaticRestart", false)
	expect(t, in, "scheduling.instanceTerminationAction", "DELETE")
	expect(t, in, "scheduling.onHostMaintenance", "TERMINATE")
	expect(t, in, "machineType", "g2-standard-8")
	expect(t, in, "name", "understudy-tr-conformance-1")
	expect(t, in, "bootDisk.initializeParams.image", programs.GCPDefaultImage)
	expect(t, in, "metadata.block-project-ssh-keys", "TRUE")
	if _, ok := in["guestAccelerators"]; ok {
		t.Error("a g2 machine has its L4 built in, yet guestAccelerators is set")
	}
	keys, _ := strAt(in, "metadata.ssh-keys")
	if !strings.HasPrefix(keys, "understudy:ssh-ed25519 ") || strings.Contains(keys, "\n") {
		t.Errorf("ssh-keys = %q, want one understudy:ssh-ed25519 line", keys)
	}
	tags := stringList(in["tags"])
	if len(tags) != 1 {
		t.Fatalf("network tags = %v, want the job's one", tags)
	}
	for _, r := range rec.regs {
		if r.TypeToken == programs.GCPFirewallType {
			if got := stringList(r.Inputs["targetTags"]); len(got) != 1 || got[0] != tags[0] {
				t.Errorf("firewall %s targets %v, want the job's tag %s", r.Name, got, tags[0])
			}
		}
	}
	if out.Host != "34.122.10.20" || out.InstanceID != "5823174659120034817" || out.GPU != "1x NVIDIA L4 (24 GB)" ||
		out.HourlyPrice != 0.85 || out.User != "understudy" {
		t.Errorf("outputs = %+v", out)
	}

	rec, out = deployOutputs(t, gcpHarness, func(s *programs.Spec) { s.Machine.GPUType = "nvidia-tesla-t4" })
	in = rec.inputs(t, programs.GCPInstanceType)
	expect(t, in, "machineType", "n1-standard-8")
	expect(t, in, "scheduling.onHostMaintenance", "TERMINATE")
	expect(t, in, "scheduling.automaticRestart", false)
	if _, ok := in["scheduling"].ObjectValue()["provisioningModel"]; ok {
		t.Error("an on-demand instance has a provisioning model")
	}
	acc, _ := at(in, "guestAccelerators")
	if !acc.IsArray() || len(acc.ArrayValue()) != 1 {
		t.Fatalf("guestAccelerators = %v, want one", acc)
	}
	a := acc.ArrayValue()[0].ObjectValue()
	if a["type"].StringValue() != "nvidia-tesla-t4" || a["count"].NumberValue() != 1 {
		t.Errorf("guestAccelerators[0] = %v", a)
	}
	if out.GPU != "1x NVIDIA T4 (16 GB)" || out.HourlyPrice != 0.38+0.35 {
		t.Errorf("outputs = %+v", out)
	}

	// A configured accelerator-optimized type serves a job that names no GPU; a job that
	// names another GPU gets a machine that carries it.
	rec, _ = deployOutputs(t, gcpHarness, func(s *programs.Spec) { s.GCP.MachineType = "a2-highgpu-1g" })
	expect(t, rec.inputs(t, programs.GCPInstanceType), "machineType", "a2-highgpu-1g")
	rec, _ = deployOutputs(t, gcpHarness, func(s *programs.Spec) {
		s.GCP.MachineType = "a2-highgpu-1g"
		s.Machine.GPUType = "nvidia-l4"
	})
	expect(t, rec.inputs(t, programs.GCPInstanceType), "machineType", "g2-standard-8")
}

func TestAzureVirtualMachine(t *testing.T) {
	deadline := time.Date(2026, 3, 1, 10, 30, 0, 0, time.UTC)
	rec, out := deployOutputs(t, azureHarness, func(s *programs.Spec) {
		s.Machine.Spot = true
		s.Deadline = deadline
	})
	vm := rec.inputs(t, programs.AzureVirtualMachineType)
	expect(t, vm, "priority", "Spot")
	expect(t, vm, "evictionPolicy", "Delete")
	expect(t, vm, "billingProfile.maxPrice", -1.0)
	expect(t, vm, "hardwareProfile.vmSize", programs.AzureDefaultVMSize)
	expect(t, vm, "osProfile.adminUsername", "understudy")
	expect(t, vm, "osProfile.linuxConfiguration.disablePasswordAuthentication", true)
	expect(t, vm, "storageProfile.osDisk.createOption", "FromImage")
	expect(t, vm, "storageProfile.osDisk.deleteOption", "Delete")
	expect(t, vm, "storageProfile.osDisk.diskSizeGB", 128.0)
	expect(t, vm, "storageProfile.imageReference.publisher", "microsoft-dsvm")
	expect(t, vm, "storageProfile.imageReference.offer", "ubuntu-2204")
	expect(t, vm, "storageProfile.imageReference.sku", "2204-gen2")
	keys, _ := at(vm, "osProfile.linuxConfiguration.ssh.publicKeys")
	if !keys.IsArray() || len(keys.ArrayValue()) != 1 {
		t.Fatalf("publicKeys = %v, want the job's key only", keys)
	}
	expect(t, keys.ArrayValue()[0].ObjectValue(), "path", "/home/understudy/.ssh/authorized_keys")
	vmName, _ := strAt(vm, "vmName")
	sched := rec.inputs(t, programs.AzureShutdownScheduleType)
	expect(t, sched, "status", "Enabled")
	expect(t, sched, "taskType", "ComputeVmShutdownTask")
	expect(t, sched, "name", "shutdown-computevm-"+vmName)
	expect(t, sched, "dailyRecurrence.time", "1130")
	expect(t, sched, "timeZoneId", "UTC")
	expect(t, sched, "targetResourceId", azureID("understudy-tr-conformance-1-rg", "Microsoft.Compute", "virtualMachines", vmName))
	expect(t, rec.inputs(t, programs.AzurePublicIPAddressType), "sku.name", "Standard")
	expect(t, rec.inputs(t, programs.AzurePublicIPAddressType), "publicIPAllocationMethod", "Static")
	nic := rec.inputs(t, programs.AzureNetworkInterfaceType)
	if _, ok := at(nic, "networkSecurityGroup.id"); !ok {
		t.Error("the network interface has no network security group")
	}
	if out.Host != "20.121.5.6" || out.GPU != "1x NVIDIA T4 (16 GB)" || out.HourlyPrice != 0.526 ||
		!strings.HasSuffix(out.InstanceID, "/virtualMachines/"+vmName) {
		t.Errorf("outputs = %+v", out)
	}

	rec, _ = deployOutputs(t, azureHarness, func(s *programs.Spec) {})
	vm = rec.inputs(t, programs.AzureVirtualMachineType)
	expect(t, vm, "priority", "Regular")
	for _, k := range []resource.PropertyKey{"evictionPolicy", "billingProfile"} {
		if _, ok := vm[k]; ok {
			t.Errorf("an on-demand machine has %s", k)
		}
	}
}

// The daily auto-shutdown serves jobs that end within a day: an hour after a near deadline,
// a day after the machine is made without one, and off for a deadline further ahead (any
// time of day would stop the job before it).
func TestAzureAutoShutdown(t *testing.T) {
	near := time.Now().Add(2 * time.Hour)
	for name, tc := range map[string]struct {
		deadline time.Time
		status   string
		times    func() []string
	}{
		"near deadline": {near, "Enabled", func() []string { return []string{near.UTC().Add(time.Hour).Format("1504")} }},
		"far deadline":  {time.Now().Add(48 * time.Hour), "Disabled", nil},
		"no deadline":   {time.Time{}, "Enabled", nil},
	} {
		t.Run(name, func(t *testing.T) {
			before := time.Now()
			rec, _ := deployOutputs(t, azureHarness, func(s *programs.Spec) { s.Deadline = tc.deadline })
			after := time.Now()
			sched := rec.inputs(t, programs.AzureShutdownScheduleType)
			expect(t, sched, "status", tc.status)
			want := []string{before.UTC().Add(23*time.Hour + 50*time.Minute).Format("1504"), after.UTC().Add(23*time.Hour + 50*time.Minute).Format("1504")}
			if tc.times != nil {
				want = tc.times()
			}
			got, _ := at(sched, "dailyRecurrence.time")
			if tc.status == "Enabled" && !slices.Contains(want, got.StringValue()) {
				t.Errorf("shutdown at %v, want one of %v", got, want)
			}
		})
	}
}

func TestAzureExistingResourceGroupAndOperatorKey(t *testing.T) {
	rec, _ := deployOutputs(t, azureHarness, func(s *programs.Spec) {
		s.Azure.ResourceGroup = "ml-training"
		s.Azure.OperatorKeyName = "ops-laptop"
	})
	for _, r := range rec.regs {
		if r.TypeToken == programs.AzureResourceGroupType {
			t.Fatal("a resource group was registered although Azure.ResourceGroup names one")
		}
		if strings.HasPrefix(r.TypeToken, "azure-native:") {
			if g, _ := strAt(r.Inputs, "resourceGroupName"); g != "ml-training" {
				t.Errorf("%s is in group %q, want ml-training", r.TypeToken, g)
			}
		}
	}
	keys, _ := at(rec.inputs(t, programs.AzureVirtualMachineType), "osProfile.linuxConfiguration.ssh.publicKeys")
	if !keys.IsArray() || len(keys.ArrayValue()) != 2 {
		t.Fatalf("publicKeys = %v, want the job's and the operator's", keys)
	}
	expect(t, keys.ArrayValue()[1].ObjectValue(), "keyData", operatorKey)
}

func TestCloudName(t *testing.T) {
	for id, want := range map[string]string{
		"tr-1":   "understudy-tr-1",
		"job-a":  "understudy-job-a",
		"abc123": "understudy-abc123",
	} {
		if got := programs.CloudName(id, 63); got != want {
			t.Errorf("CloudName(%q) = %q, want %q", id, got, want)
		}
	}
	valid := func(n string, max int) bool {
		if len(n) > max || !strings.HasPrefix(n, programs.MachinePrefix) || strings.HasSuffix(n, "-") {
			return false
		}
		for _, r := range n {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
		return true
	}
	long := strings.Repeat("x", 90)
	ids := []string{"Job_A", "job-a", "JOB-A", "job.a", "job-", "_", long + "-1", long + "-2", strings.Repeat("Y", 128)}
	for _, max := range []int{63, 64, 255} {
		seen := map[string]string{}
		for _, id := range ids {
			n := programs.CloudName(id, max)
			if !valid(n, max) {
				t.Errorf("CloudName(%q, %d) = %q: not a valid name", id, max, n)
			}
			if other, dup := seen[n]; dup {
				t.Errorf("CloudName(%q) = CloudName(%q) = %q", id, other, n)
			}
			seen[n] = id
			if programs.CloudName(id, max) != n {
				t.Errorf("CloudName(%q) is not stable", id)
			}
		}
	}
}

func TestGCPLabels(t *testing.T) {
	got := programs.GCPLabels(map[string]string{"Team": "Research Lab", "9lives": "x", "k": strings.Repeat("v", 70)})
	if got["team"] != "research_lab" || got["k9lives"] != "x" || len(got["k"]) != 63 {
		t.Errorf("GCPLabels = %v", got)
	}
}

func TestInspectClouds(t *testing.T) {
	for _, c := range []struct {
		provider, typ string
		outputs       map[string]any
		want          programs.MachineState
	}{
		{"aws", programs.AWSInstanceType, map[string]any{"instanceState": "running", "instanceLifecycle": "spot"},
			programs.MachineState{Exists: true, Running: true, Interruptible: true, Status: "running"}},
		{"aws", programs.AWSInstanceType, map[string]any{"instanceState": "pending", "instanceLifecycle": ""},
			programs.MachineState{Exists: true, Running: true, Status: "pending"}},
		{"aws", programs.AWSInstanceType, map[string]any{"instanceState": "stopped", "instanceLifecycle": "spot"},
			programs.MachineState{Exists: true, Interruptible: true, Status: "stopped"}},
		{"aws", programs.AWSInstanceType, map[string]any{"instanceState": "shutting-down"},
			programs.MachineState{Exists: true, Status: "shutting-down"}},
		{"gcp", programs.GCPInstanceType, map[string]any{"currentStatus": "RUNNING", "scheduling": map[string]any{"provisioningModel": "STANDARD"}},
			programs.MachineState{Exists: true, Running: true, Status: "RUNNING"}},
		{"gcp", programs.GCPInstanceType, map[string]any{"currentStatus": "TERMINATED", "scheduling": map[string]any{"provisioningModel": "SPOT", "preemptible": true}},
			programs.MachineState{Exists: true, Interruptible: true, Status: "TERMINATED"}},
		{"azure", programs.AzureVirtualMachineType, map[string]any{"provisioningState": "Succeeded", "priority": "Spot"},
			programs.MachineState{Exists: true, Running: true, Interruptible: true, Status: "Succeeded"}},
		{"azure", programs.AzureVirtualMachineType, map[string]any{"provisioningState": "Succeeded", "priority": "Spot",
			"instanceView": map[string]any{"statuses": []any{map[string]any{"code": "ProvisioningState/succeeded"},
				map[string]any{"code": "PowerState/deallocated"}}}},
			programs.MachineState{Exists: true, Interruptible: true, Status: "PowerState/deallocated"}},
		{"azure", programs.AzureVirtualMachineType, map[string]any{"provisioningState": "Failed", "priority": "Regular"},
			programs.MachineState{Exists: true, Status: "Failed"}},
	} {
		prog, err := programs.For(c.provider)
		if err != nil {
			t.Fatal(err)
		}
		got := prog.Inspect([]programs.Resource{{Type: "pulumi:providers:" + c.provider}, {Type: c.typ, Outputs: c.outputs}})
		if got != c.want {
			t.Errorf("%s %v: Inspect = %+v, want %+v", c.provider, c.outputs, got, c.want)
		}
		if prog.Inspect(nil).Exists {
			t.Errorf("%s: Inspect without resources reports a machine", c.provider)
		}
	}
}

// TestPluginVersionsMatchGoMod keeps the plugin versions that stacks installs equal to the
// SDK versions in go.mod; the conformance suite checks that the SDKs register with them.
func TestPluginVersionsMatchGoMod(t *testing.T) {
	data, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	mod, err := modfile.Parse("go.mod", data, nil)
	if err != nil {
		t.Fatal(err)
	}
	versions := map[string]string{}
	for _, r := range mod.Require {
		versions[r.Mod.Path] = strings.TrimPrefix(r.Mod.Version, "v")
	}
	for _, c := range []struct{ provider, plugin, module string }{
		{"aws", "aws", "github.com/pulumi/pulumi-aws/sdk/v6"},
		{"gcp", "gcp", "github.com/pulumi/pulumi-gcp/sdk/v7"},
		{"azure", "azure-native", "github.com/pulumi/pulumi-azure-native-sdk/compute/v2"},
		{"azure", "azure-native", "github.com/pulumi/pulumi-azure-native-sdk/network/v2"},
		{"azure", "azure-native", "github.com/pulumi/pulumi-azure-native-sdk/resources/v2"},
		{"azure", "azure-native", "github.com/pulumi/pulumi-azure-native-sdk/devtestlab/v2"},
		{"azure", "azure-native", "github.com/pulumi/pulumi-azure-native-sdk/v2"},
	} {
		prog, err := programs.For(c.provider)
		if err != nil {
			t.Fatal(err)
		}
		name, ver, ok := prog.Plugin()
		if !ok || name != c.plugin {
			t.Errorf("%s: Plugin() = %q %q %v, want plugin %s", c.provider, name, ver, ok, c.plugin)
		}
		if versions[c.module] != ver {
			t.Errorf("%s: plugin version %s, but go.mod requires %s %q", c.provider, ver, c.module, versions[c.module])
		}
	}
	for _, p := range []string{"local", "runpod", "lambda"} {
		prog, _ := programs.For(p)
		if _, _, ok := prog.Plugin(); ok {
			t.Errorf("%s: Plugin() ok, want the in-repo provider only", p)
		}
	}
	if programs.AWSPluginVersion != "6.83.4" || programs.GCPPluginVersion != "7.38.0" || programs.AzureNativePluginVersion != "2.90.0" {
		t.Error("plugin version constants changed without this test")
	}
}

func deployRegsOf(t *testing.T, h programtest.Harness, spec programs.Spec) []pulumi.MockResourceArgs {
	t.Helper()
	prog, err := programs.For(h.Provider)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{fake: h.NewResource, call: h.Call}
	if err := pulumi.RunErr(prog.Func(spec), pulumi.WithMocks("understudy-training", spec.TrainID, rec)); err != nil {
		t.Fatal(err)
	}
	return rec.regs
}

// TestOpenIngressOnlyWhenWrittenOut: the whole internet is a range like any other, taken
// when configured (discouraged, documented); no ranges at all is refused.
func TestOpenIngressOnlyWhenWrittenOut(t *testing.T) {
	for _, h := range []programtest.Harness{awsHarness, gcpHarness, azureHarness} {
		prog, err := programs.For(h.Provider)
		if err != nil {
			t.Fatal(err)
		}
		spec := h.BaseSpec(t, programtest.NewKeys(t))
		spec.SSHIngressCIDRs = []string{"0.0.0.0/0"}
		if err := prog.Validate(spec); err != nil {
			t.Errorf("%s: Validate of an explicit 0.0.0.0/0: %v", h.Provider, err)
		}
		// A service reachable over both families configures both; each machine admits
		// the family it has an address of.
		spec.SSHIngressCIDRs = []string{"203.0.113.7/32", "2001:db8::/64"}
		rules, err := h.Ingress(deployRegsOf(t, h, spec))
		if err != nil {
			t.Fatal(err)
		}
		admitted := map[string]bool{}
		for _, r := range rules {
			if r.Allow {
				for _, s := range r.Sources {
					admitted[s] = true
				}
			}
		}
		if !admitted["203.0.113.7/32"] || (admitted["2001:db8::/64"] != (h.Provider == "aws")) {
			t.Errorf("%s: admitted %v from both families", h.Provider, admitted)
		}
		spec.SSHIngressCIDRs = nil
		if err := prog.ValidateOptions(spec); err == nil || !strings.Contains(err.Error(), "SSHIngressCIDRs") {
			t.Errorf("%s: ValidateOptions without ranges: %v, want an error naming SSHIngressCIDRs", h.Provider, err)
		}
		spec.SSHIngressCIDRs = programtest.IngressCIDRs
		spec.Machine = programs.MachineOptions{Spot: true, OnDemandFallback: true}
		if err := prog.ValidateOptions(spec); err == nil || !strings.Contains(err.Error(), "on_demand_fallback is supported on runpod only") {
			t.Errorf("%s: ValidateOptions with on-demand fallback: %v", h.Provider, err)
		}
	}
}
