package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/lifecycle"
	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/provider/cloudapi"
	"github.com/understudy-ai/training-service/provider/lambda"
	"github.com/understudy-ai/training-service/provider/runpod"
)

// providers is the service's configuration of its machine providers, read from the
// environment the seed names. Secrets (API keys) come from NAME or from the file NAME_FILE;
// the provider plugin reads the same variables itself, so they never enter a stack.
type providers struct {
	programs lifecycle.ProgramConfig
	// status says of every provider "ready" or "not configured: <what is missing>".
	status map[string]string
	// clients of the clouds that are configured, for `stacks gc`.
	runpod *runpod.Client
	lambda *lambda.Client
	// engineEnv is the environment the Pulumi CLI and the cloud plugins get beyond the
	// service's own: credentials read from *_FILE variables, Azure's ARM_* names.
	engineEnv map[string]string
}

// loadProviders reads the providers' configuration. A provider without its API key is
// "not configured" (a start for it is a 422 naming the variable); a malformed setting, or
// a key file that group or others may read, is an error that stops the service.
func loadProviders(getenv func(string) string) (*providers, error) {
	p := &providers{status: map[string]string{}, programs: lifecycle.ProgramConfig{NotConfigured: map[string]string{}},
		engineEnv: map[string]string{}}
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{name}, args...)...))
	}
	integer := func(name string, lo, hi int) int {
		v := strings.TrimSpace(getenv(name))
		if v == "" {
			return 0
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			bad(name, "%q: want a whole number from %d to %d", v, lo, hi)
			return 0
		}
		return n
	}
	notConfigured := func(name, what string) {
		p.programs.NotConfigured[name] = what
		p.status[name] = "not configured: " + what
	}

	// RunPod.
	rp := programs.RunPodConfig{
		APIURL:   strings.TrimSpace(getenv("RUNPOD_API_URL")),
		GPUType:  strings.TrimSpace(getenv("RUNPOD_GPU_TYPE")),
		GPUCount: integer("RUNPOD_GPU_COUNT", 1, 8),
		Image:    strings.TrimSpace(getenv("RUNPOD_IMAGE")),
		Cloud:    strings.ToUpper(strings.TrimSpace(getenv("RUNPOD_CLOUD"))),
		DiskGB:   integer("RUNPOD_DISK_GB", 1, 10000),
		WorkDir:  strings.TrimSpace(getenv("RUNPOD_WORK_DIR")),
	}
	if dcs := strings.TrimSpace(getenv("RUNPOD_DATA_CENTER_IDS")); dcs != "" {
		for _, dc := range strings.Split(dcs, ",") {
			if dc = strings.TrimSpace(dc); dc != "" {
				rp.DataCenterIDs = append(rp.DataCenterIDs, dc)
			}
		}
	}
	if key, err := operatorKey(getenv("RUNPOD_SSH_PUBLIC_KEY"), getenv("RUNPOD_SSH_PRIVATE_KEY_PATH")); err != nil {
		errs = append(errs, err)
	} else {
		rp.OperatorKey = key
	}
	p.programs.RunPod = rp
	if key, err := secret(getenv, "RUNPOD_API_KEY"); errors.Is(err, cloudapi.ErrNotSet) {
		notConfigured("runpod", "RUNPOD_API_KEY (or RUNPOD_API_KEY_FILE) is not set")
	} else if err != nil {
		errs = append(errs, err)
	} else {
		p.status["runpod"] = "ready"
		p.runpod = runpod.New(runpod.Config{APIURL: rp.APIURL, APIKey: key})
	}

	// Lambda Cloud.
	lc := programs.LambdaConfig{
		APIURL:          strings.TrimSpace(getenv("LAMBDA_API_URL")),
		InstanceType:    strings.TrimSpace(getenv("LAMBDA_INSTANCE_TYPE")),
		Region:          strings.TrimSpace(getenv("LAMBDA_REGION")),
		SSHUser:         strings.TrimSpace(getenv("LAMBDA_SSH_USER")),
		SSHPort:         integer("LAMBDA_SSH_PORT", 1, 65535),
		WorkDir:         strings.TrimSpace(getenv("LAMBDA_WORK_DIR")),
		OperatorKeyName: strings.TrimSpace(getenv("LAMBDA_SSH_KEY_NAME")),
	}
	p.programs.Lambda = lc
	if key, err := secret(getenv, "LAMBDA_API_KEY"); errors.Is(err, cloudapi.ErrNotSet) {
		notConfigured("lambda", "LAMBDA_API_KEY (or LAMBDA_API_KEY_FILE) is not set")
	} else if err != nil {
		errs = append(errs, err)
	} else {
		p.status["lambda"] = "ready"
		p.lambda = lambda.New(lambda.Config{APIURL: lc.APIURL, APIKey: key})
	}

	errs = append(errs, loadClouds(getenv, p)...)

	p.status["local"] = "ready"
	for _, name := range []string{"runpod", "lambda"} {
		prog, err := programs.For(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := prog.ValidateOptions(programs.Spec{Provider: name, RunPod: rp, Lambda: lc}); err != nil {
			errs = append(errs, fmt.Errorf("%s configuration: %s", name, strings.TrimPrefix(err.Error(), "provider "+name+": ")))
		}
	}
	return p, errors.Join(errs...)
}

// secret reads NAME or the file NAME_FILE through getenv.
func secret(getenv func(string) string, name string) (string, error) {
	if v := strings.TrimSpace(getenv(name)); v != "" {
		return v, nil
	}
	if path := getenv(name + "_FILE"); path != "" {
		return cloudapi.ReadSecretFile(path)
	}
	return "", fmt.Errorf("%s: %w", name, cloudapi.ErrNotSet)
}

// operatorKey returns the operator's public key line from RUNPOD_SSH_PUBLIC_KEY, or derived
// from the private key file at RUNPOD_SSH_PRIVATE_KEY_PATH, which must be owner-only. The
// service never logs in with it: it is authorised on the machines for debugging.
func operatorKey(public, privatePath string) (string, error) {
	public = strings.TrimSpace(public)
	if public != "" {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(public)); err != nil {
			return "", fmt.Errorf("RUNPOD_SSH_PUBLIC_KEY: not a public key line: %w", err)
		}
	}
	if privatePath == "" {
		return public, nil
	}
	raw, err := cloudapi.ReadSecretFile(privatePath)
	if err != nil {
		return "", fmt.Errorf("RUNPOD_SSH_PRIVATE_KEY_PATH: %w", err)
	}
	signer, err := ssh.ParsePrivateKey([]byte(raw))
	if err != nil {
		return "", fmt.Errorf("RUNPOD_SSH_PRIVATE_KEY_PATH: %s is not an unencrypted OpenSSH private key: %w", privatePath, err)
	}
	derived := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	if public != "" && !strings.HasPrefix(public, derived) {
		return "", errors.New("RUNPOD_SSH_PUBLIC_KEY does not match the key at RUNPOD_SSH_PRIVATE_KEY_PATH")
	}
	if public == "" {
		public = derived
	}
	return public, nil
}

// envGetter is os.Getenv, replaceable in tests.
var envGetter = os.Getenv
