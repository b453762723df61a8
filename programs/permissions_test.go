package programs_test

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"testing"

	"gopkg.in/yaml.v3"
)

// The least-privilege permission files in deploy/permissions decode strictly and grant at
// least what the programs do: create, read and delete each resource they register.
func TestPermissionFilesCoverThePrograms(t *testing.T) {
	read := func(name string) []byte {
		raw, err := os.ReadFile("../deploy/permissions/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	need := func(file string, have, want []string) {
		for _, w := range want {
			if !slices.Contains(have, w) {
				t.Errorf("%s lacks %s", file, w)
			}
		}
	}

	var aws struct {
		Version   string
		Statement []struct {
			Sid       string
			Effect    string
			Action    []string
			Resource  any
			Condition map[string]any
		}
	}
	dec := json.NewDecoder(bytes.NewReader(read("aws-iam-policy.json")))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&aws); err != nil {
		t.Fatalf("aws-iam-policy.json: %v", err)
	}
	var actions []string
	for _, s := range aws.Statement {
		if s.Effect == "Allow" {
			actions = append(actions, s.Action...)
		}
	}
	need("aws-iam-policy.json", actions, []string{"ec2:RunInstances", "ec2:TerminateInstances", "ec2:DescribeInstances",
		"ec2:ImportKeyPair", "ec2:DeleteKeyPair", "ec2:CreateSecurityGroup", "ec2:DeleteSecurityGroup",
		"ec2:AuthorizeSecurityGroupIngress", "ec2:AuthorizeSecurityGroupEgress", "ec2:RevokeSecurityGroupEgress",
		"ec2:CreateTags", "ec2:DescribeImages"})

	var gcp struct {
		Title               string   `yaml:"title"`
		Description         string   `yaml:"description"`
		Stage               string   `yaml:"stage"`
		IncludedPermissions []string `yaml:"includedPermissions"`
	}
	ydec := yaml.NewDecoder(bytes.NewReader(read("gcp-custom-role.yaml")))
	ydec.KnownFields(true)
	if err := ydec.Decode(&gcp); err != nil {
		t.Fatalf("gcp-custom-role.yaml: %v", err)
	}
	need("gcp-custom-role.yaml", gcp.IncludedPermissions, []string{"compute.instances.create", "compute.instances.delete",
		"compute.instances.get", "compute.instances.setMetadata", "compute.firewalls.create", "compute.firewalls.delete",
		"compute.disks.create", "compute.subnetworks.use", "compute.subnetworks.useExternalIp"})

	var azure struct {
		Name, Description                                string
		IsCustom                                         bool
		Actions, NotActions, DataActions, NotDataActions []string
		AssignableScopes                                 []string
	}
	dec = json.NewDecoder(bytes.NewReader(read("azure-custom-role.json")))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&azure); err != nil {
		t.Fatalf("azure-custom-role.json: %v", err)
	}
	need("azure-custom-role.json", azure.Actions, []string{"Microsoft.Resources/subscriptions/resourceGroups/write",
		"Microsoft.Resources/subscriptions/resourceGroups/delete", "Microsoft.Compute/virtualMachines/write",
		"Microsoft.Compute/virtualMachines/delete", "Microsoft.Network/networkSecurityGroups/write",
		"Microsoft.Network/publicIPAddresses/write", "Microsoft.Network/networkInterfaces/write",
		"Microsoft.Network/virtualNetworks/write", "Microsoft.DevTestLab/schedules/write", "Microsoft.Compute/sshPublicKeys/read"})
}
