package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/provider/cloudapi"
	"github.com/understudy-ai/training-service/stacks"
)

// EnvSSHIngress names the address ranges the service connects from, comma-separated: the
// AWS, GCP and Azure firewalls of every job admit SSH from these only.
const EnvSSHIngress = "UNDERSTUDY_SSH_INGRESS_CIDRS"

// cloudEnv collects what one cloud's configuration needs: the variables that are missing,
// the settings that are malformed, and the environment its Pulumi plugin gets.
type cloudEnv struct {
	getenv  func(string) string
	missing []string
	errs    []error
	engine  map[string]string
}

// str reads a plain setting.
func (c *cloudEnv) str(name string) string { return strings.TrimSpace(c.getenv(name)) }

// require reads a required plain setting, noting it when missing.
func (c *cloudEnv) require(name string) string {
	v := c.str(name)
	if v == "" {
		c.missing = append(c.missing, name)
	}
	return v
}

// secret reads a secret from NAME or the file NAME_FILE; required secrets are noted when
// missing.
func (c *cloudEnv) secret(name string, required bool) string {
	v, err := secret(c.getenv, name)
	switch {
	case errors.Is(err, cloudapi.ErrNotSet):
		if required {
			c.missing = append(c.missing, name+" (or "+name+"_FILE)")
		}
		return ""
	case err != nil:
		c.errs = append(c.errs, err)
		return ""
	}
	return v
}

// integer reads a whole number in [lo, hi]; empty is 0.
func (c *cloudEnv) integer(name string, lo, hi int) int {
	v := c.str(name)
	if v == "" {
		return 0
	}
	var n int
	if _, err := fmt.Sscanf(v, "%d", &n); err != nil || fmt.Sprint(n) != v || n < lo || n > hi {
		c.errs = append(c.errs, fmt.Errorf("%s: %q: want a whole number from %d to %d", name, v, lo, hi))
		return 0
	}
	return n
}

// set passes a value to the cloud's Pulumi plugin, when it is not empty.
func (c *cloudEnv) set(name, value string) {
	if value != "" {
		c.engine[name] = value
	}
}

// ingressCIDRs parses UNDERSTUDY_SSH_INGRESS_CIDRS.
func ingressCIDRs(getenv func(string) string) ([]string, error) {
	raw := strings.TrimSpace(getenv(EnvSSHIngress))
	if raw == "" {
		return nil, nil
	}
	var out []string
	for _, part := range strings.Split(raw, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		p, err := netip.ParsePrefix(part)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not an address range such as 203.0.113.7/32", EnvSSHIngress, part)
		}
		if p.Masked() != p {
			return nil, fmt.Errorf("%s: %q has host bits set; did you mean %s?", EnvSSHIngress, part, p.Masked())
		}
		out = append(out, p.String())
	}
	return out, nil
}

// loadClouds reads the AWS, GCP and Azure configuration into p: a cloud whose required
// variables are missing is "not configured" naming them (a start for it is a 422); a
// malformed setting or a secret file that group or others may read is an error. Secrets
// read from files reach the cloud's Pulumi plugin through p.engineEnv, never a stack's
// configuration.
func loadClouds(getenv func(string) string, p *providers) []error {
	var errs []error
	cidrs, err := ingressCIDRs(getenv)
	if err != nil {
		errs = append(errs, err)
	}
	p.programs.SSHIngressCIDRs = cidrs
	finish := func(name string, c *cloudEnv, validate programs.Spec) {
		errs = append(errs, c.errs...)
		if len(cidrs) == 0 && err == nil {
			c.missing = append(c.missing, EnvSSHIngress+" (the address ranges the service connects from)")
		}
		if len(c.missing) > 0 {
			what := strings.Join(c.missing, ", ") + " not set"
			p.programs.NotConfigured[name] = what
			p.status[name] = "not configured: " + what
			return
		}
		prog, perr := programs.For(name)
		if perr == nil {
			validate.Provider = name
			validate.SSHIngressCIDRs = cidrs
			perr = prog.ValidateOptions(validate)
		}
		if perr != nil {
			errs = append(errs, fmt.Errorf("%s configuration: %s", name, strings.TrimPrefix(perr.Error(), "provider "+name+": ")))
			return
		}
		for k, v := range c.engine {
			p.engineEnv[k] = v
		}
		p.status[name] = "ready"
	}

	// AWS: the seed's AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION.
	aws := &cloudEnv{getenv: getenv, engine: map[string]string{}}
	keyID := aws.secret("AWS_ACCESS_KEY_ID", true)
	keySecret := aws.secret("AWS_SECRET_ACCESS_KEY", true)
	token := aws.secret("AWS_SESSION_TOKEN", false)
	region := aws.str("AWS_REGION")
	if region == "" {
		region = aws.str("AWS_DEFAULT_REGION")
	}
	if region == "" {
		aws.missing = append(aws.missing, "AWS_REGION")
	}
	aws.set("AWS_ACCESS_KEY_ID", keyID)
	aws.set("AWS_SECRET_ACCESS_KEY", keySecret)
	aws.set("AWS_SESSION_TOKEN", token)
	aws.set("AWS_REGION", region)
	p.programs.AWS = programs.AWSConfig{
		Region:       region,
		InstanceType: aws.str("AWS_INSTANCE_TYPE"),
		AMI:          aws.str("AWS_AMI_ID"),
		SubnetID:     aws.str("AWS_SUBNET_ID"),
		VPCID:        aws.str("AWS_VPC_ID"),
		DiskGB:       aws.integer("AWS_DISK_GB", 8, 16384),
	}
	finish("aws", aws, programs.Spec{AWS: p.programs.AWS})

	// GCP: the project, the zone and a service account's credentials file, as the Google
	// client libraries and the gcp plugin name them.
	gcp := &cloudEnv{getenv: getenv, engine: map[string]string{}}
	project := gcp.str("GOOGLE_PROJECT")
	if project == "" {
		project = gcp.str("GOOGLE_CLOUD_PROJECT")
	}
	if project == "" {
		gcp.missing = append(gcp.missing, "GOOGLE_PROJECT")
	}
	zone := gcp.require("GOOGLE_ZONE")
	if creds := gcp.str("GOOGLE_APPLICATION_CREDENTIALS"); creds == "" {
		gcp.missing = append(gcp.missing, "GOOGLE_APPLICATION_CREDENTIALS (a service account key file)")
	} else if _, err := cloudapi.ReadSecretFile(creds); err != nil {
		gcp.errs = append(gcp.errs, fmt.Errorf("GOOGLE_APPLICATION_CREDENTIALS: %w", err))
	} else {
		gcp.set("GOOGLE_APPLICATION_CREDENTIALS", creds)
	}
	gcp.set("GOOGLE_PROJECT", project)
	gcp.set("GOOGLE_ZONE", zone)
	p.programs.GCP = programs.GCPConfig{
		Project:     project,
		Zone:        zone,
		MachineType: gcp.str("GCP_MACHINE_TYPE"),
		GPUType:     gcp.str("GCP_GPU_TYPE"),
		GPUCount:    gcp.integer("GCP_GPU_COUNT", 1, 16),
		Image:       gcp.str("GCP_IMAGE"),
		Network:     gcp.str("GCP_NETWORK"),
		Subnetwork:  gcp.str("GCP_SUBNETWORK"),
		DiskGB:      gcp.integer("GCP_DISK_GB", 10, 65536),
	}
	finish("gcp", gcp, programs.Spec{GCP: p.programs.GCP})

	// Azure: the seed's AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZURE_SSH_KEY_NAME,
	// and a service principal (or the machine's managed identity) for the azure-native
	// plugin, which reads them as ARM_*.
	az := &cloudEnv{getenv: getenv, engine: map[string]string{}}
	sub := az.require("AZURE_SUBSCRIPTION_ID")
	location := az.require("AZURE_LOCATION")
	if strings.EqualFold(az.str("AZURE_USE_MSI"), "true") {
		az.set("ARM_USE_MSI", "true")
		az.set("ARM_CLIENT_ID", az.str("AZURE_CLIENT_ID"))
	} else {
		az.set("ARM_CLIENT_ID", az.require("AZURE_CLIENT_ID"))
		az.set("ARM_TENANT_ID", az.require("AZURE_TENANT_ID"))
		az.set("ARM_CLIENT_SECRET", az.secret("AZURE_CLIENT_SECRET", true))
	}
	az.set("ARM_SUBSCRIPTION_ID", sub)
	az.set("ARM_LOCATION", location)
	p.programs.Azure = programs.AzureConfig{
		SubscriptionID:   sub,
		Location:         location,
		ResourceGroup:    az.str("AZURE_RESOURCE_GROUP"),
		OperatorKeyName:  az.str("AZURE_SSH_KEY_NAME"),
		OperatorKeyGroup: az.str("AZURE_SSH_KEY_RESOURCE_GROUP"),
		VMSize:           az.str("AZURE_VM_SIZE"),
		Image:            az.str("AZURE_IMAGE"),
		DiskGB:           az.integer("AZURE_DISK_GB", 30, 4095),
	}
	finish("azure", az, programs.Spec{Azure: p.programs.Azure})
	return errs
}

// installPlugins makes sure every configured provider whose program needs a Pulumi plugin
// (aws, gcp, azure-native) has the version its SDK in go.mod asks for; with download false
// it only checks. A provider whose plugin is missing is not ready: a start for it is a 422
// naming the plugin, and /readyz shows it.
func (p *providers) installPlugins(ctx context.Context, mgr *stacks.Manager, download bool, log *slog.Logger) {
	for _, name := range slices.Sorted(maps.Keys(p.status)) {
		if p.status[name] != "ready" {
			continue
		}
		prog, err := programs.For(name)
		if err != nil {
			continue
		}
		plugin, ver, ok := prog.Plugin()
		if !ok || mgr.PluginInstalled(plugin, ver) {
			continue
		}
		err = fmt.Errorf("the Pulumi plugin %s v%s is not installed (UNDERSTUDY_INSTALL_PLUGINS=false)", plugin, ver)
		if download {
			err = mgr.InstallPlugin(ctx, plugin, ver)
		}
		if err != nil {
			what := "Pulumi plugin " + plugin + " v" + ver + " missing: " + job.MessageOf(err)
			log.Warn("provider not ready", "provider", name, "err", err)
			p.programs.NotConfigured[name] = what
			p.status[name] = "not configured: " + what
		}
	}
}
