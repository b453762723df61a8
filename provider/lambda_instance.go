package provider

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pulumi/pulumi-go-provider/infer"
	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/provider/boot"
	"github.com/understudy-ai/training-service/provider/cloudapi"
	"github.com/understudy-ai/training-service/provider/lambda"
)

// Lambda Cloud defaults.
const (
	LambdaDefaultInstanceType = "gpu_1x_a10"
	LambdaDefaultUser         = "ubuntu"
	lambdaReadyTimeout        = 20 * time.Minute
	lambdaGoneTimeout         = 5 * time.Minute
)

func lambdaClient(apiURL string) (*lambda.Client, error) {
	key, err := apiKey("LAMBDA_API_KEY")
	if err != nil {
		return nil, err
	}
	return lambda.New(lambda.Config{APIURL: apiURL, APIKey: key, PollInterval: pollInterval}), nil
}

func lambdaURL(u string) string {
	if u == "" {
		return envOr("LAMBDA_API_URL", lambda.DefaultAPIURL)
	}
	return u
}

// LambdaInstance is a Lambda Cloud GPU instance (token understudy:lambda:Instance). Create
// launches it with cloud-init user data that installs the service's host key before sshd
// starts and the dead-man's switch, and waits until it is active with an address; if the
// API refuses user data, the instance is launched without and the host key it presents
// first is pinned (hostKeyTrust "first-use"). Delete terminates it and waits. The API key
// comes from LAMBDA_API_KEY (or LAMBDA_API_KEY_FILE) in the provider's environment.
type LambdaInstance struct{}

// LambdaInstanceArgs are the inputs of an instance.
type LambdaInstanceArgs struct {
	Name            string            `pulumi:"name"`
	InstanceType    string            `pulumi:"instanceType"`
	Region          string            `pulumi:"region,optional"`
	SSHKeyName      string            `pulumi:"sshKeyName"`
	OperatorKeyName string            `pulumi:"operatorKeyName,optional"`
	AuthorizedKeys  []string          `pulumi:"authorizedKeys"`
	HostPrivateKey  string            `pulumi:"hostPrivateKey,optional" provider:"secret"`
	SSHUser         string            `pulumi:"sshUser,optional"`
	SSHPort         int               `pulumi:"sshPort,optional"`
	WorkDir         string            `pulumi:"workDir"`
	LeaseSeconds    int               `pulumi:"leaseSeconds,optional"`
	Deadline        int               `pulumi:"deadline,optional"`
	APIURL          string            `pulumi:"apiUrl,optional"`
	ReadyTimeout    int               `pulumi:"readyTimeoutSeconds,optional"`
	Tags            map[string]string `pulumi:"tags,optional"`
}

// LambdaInstanceState is an instance's state.
type LambdaInstanceState struct {
	LambdaInstanceArgs

	InstanceID    string  `pulumi:"instanceId"`
	Host          string  `pulumi:"host"`
	Port          int     `pulumi:"port"`
	User          string  `pulumi:"user"`
	HostPublicKey string  `pulumi:"hostPublicKey"`
	HostKeyTrust  string  `pulumi:"hostKeyTrust"`
	HourlyPrice   float64 `pulumi:"hourlyPrice"`
	GPU           string  `pulumi:"gpu"`
	LaunchRegion  string  `pulumi:"launchRegion"`
	Status        string  `pulumi:"status"`
	Running       bool    `pulumi:"running"`
}

// Annotate sets the resource's token and description.
func (r *LambdaInstance) Annotate(a infer.Annotator) {
	a.SetToken("lambda", "Instance")
	a.Describe(&r, "A Lambda Cloud GPU instance reached over SSH, with the service's host key installed by cloud-init and a dead-man's switch.")
}

// Annotate describes the inputs.
func (a *LambdaInstanceArgs) Annotate(an infer.Annotator) {
	an.Describe(&a.Name, "The instance's name (1-64 characters), unique per job: after an ambiguous launch the instance is looked up by it.")
	an.Describe(&a.InstanceType, "The instance type, such as gpu_1x_a10.")
	an.Describe(&a.Region, "The region; empty picks the first region with capacity for the type.")
	an.Describe(&a.SSHKeyName, "The registered SSH key to launch with (the job's own, an understudy:lambda:SSHKey).")
	an.Describe(&a.OperatorKeyName, "A registered key of an operator, also authorised (through cloud-init), for debugging.")
	an.Describe(&a.AuthorizedKeys, "Public keys that may log in: the job's first.")
	an.Describe(&a.HostPrivateKey, "The instance's SSH host key (OpenSSH PEM ed25519), installed by cloud-init before sshd starts.")
	an.Describe(&a.SSHUser, "The SSH user; default ubuntu.")
	an.Describe(&a.SSHPort, "The SSH port; default 22.")
	an.Describe(&a.WorkDir, "The job's directory on the instance; its lease file is <workDir>/lease.")
	an.Describe(&a.LeaseSeconds, "The dead-man's switch: the instance powers off when its lease is not renewed for this long; 0 turns it off.")
	an.Describe(&a.Deadline, "Unix time at which the instance powers off (the job's max_duration_seconds); 0 means none.")
	an.Describe(&a.APIURL, "Lambda's API base URL; default $LAMBDA_API_URL, else "+lambda.DefaultAPIURL+".")
	an.Describe(&a.ReadyTimeout, "How long to wait for the instance to be active, in seconds; default 1200.")
	an.Describe(&a.Tags, "Labels of the job, kept in the stack's state.")
}

// Annotate describes the outputs.
func (s *LambdaInstanceState) Annotate(a infer.Annotator) {
	a.Describe(&s.InstanceID, "Lambda's id of the instance.")
	a.Describe(&s.Host, "The instance's IP address.")
	a.Describe(&s.Port, "The SSH port.")
	a.Describe(&s.User, "The SSH user.")
	a.Describe(&s.HostPublicKey, "The host key to pin, authorized_keys format.")
	a.Describe(&s.HostKeyTrust, "injected (installed before sshd started) or first-use (the API refused user data).")
	a.Describe(&s.HourlyPrice, "What the instance costs, USD per hour.")
	a.Describe(&s.GPU, "The GPUs, as Lambda describes them.")
	a.Describe(&s.LaunchRegion, "The region the instance runs in.")
	a.Describe(&s.Status, "The instance's status when last read.")
	a.Describe(&s.Running, "Whether the instance was active when last read.")
}

func (a LambdaInstanceArgs) machine() machineArgs {
	return machineArgs{authorizedKeys: a.AuthorizedKeys, hostPrivateKey: a.HostPrivateKey, workDir: a.WorkDir,
		leaseSeconds: a.LeaseSeconds, deadline: a.Deadline}
}

func (a LambdaInstanceArgs) withDefaults() LambdaInstanceArgs {
	if a.InstanceType == "" {
		a.InstanceType = LambdaDefaultInstanceType
	}
	if a.SSHUser == "" {
		a.SSHUser = LambdaDefaultUser
	}
	if a.SSHPort <= 0 {
		a.SSHPort = 22
	}
	a.APIURL = lambdaURL(a.APIURL)
	return a
}

// Create launches the instance and waits until it is active.
func (r *LambdaInstance) Create(ctx context.Context, req infer.CreateRequest[LambdaInstanceArgs]) (infer.CreateResponse[LambdaInstanceState], error) {
	in := req.Inputs.withDefaults()
	hostPub, err := in.machine().check()
	if err != nil {
		return infer.CreateResponse[LambdaInstanceState]{}, err
	}
	if in.Name == "" || len(in.Name) > 64 {
		return infer.CreateResponse[LambdaInstanceState]{}, fmt.Errorf("name %q: want 1-64 characters", in.Name)
	}
	if in.SSHKeyName == "" {
		return infer.CreateResponse[LambdaInstanceState]{}, fmt.Errorf("sshKeyName is required")
	}
	state := LambdaInstanceState{LambdaInstanceArgs: in, HostPublicKey: hostPub, HostKeyTrust: TrustInjected,
		User: in.SSHUser, Port: in.SSHPort}
	if req.DryRun {
		return infer.CreateResponse[LambdaInstanceState]{Output: state}, nil
	}
	if hostPub == "" {
		return infer.CreateResponse[LambdaInstanceState]{}, fmt.Errorf("hostPrivateKey is required")
	}
	client, err := lambdaClient(in.APIURL)
	if err != nil {
		return infer.CreateResponse[LambdaInstanceState]{}, err
	}
	offers, err := client.InstanceTypes(ctx)
	if err != nil {
		return infer.CreateResponse[LambdaInstanceState]{}, err
	}
	offer, ok := offers[in.InstanceType]
	if !ok {
		return infer.CreateResponse[LambdaInstanceState]{}, cloudapi.Errorf("lambda", cloudapi.ReasonInvalid, "launch instance",
			"unknown instance type %q (known: %s)", in.InstanceType, strings.Join(slices.Sorted(maps.Keys(offers)), ", "))
	}
	region := in.Region
	if region == "" {
		if len(offer.Regions) == 0 {
			return infer.CreateResponse[LambdaInstanceState]{}, cloudapi.Errorf("lambda", cloudapi.ReasonNoCapacity, "launch instance",
				"no region has capacity for %s now", in.InstanceType)
		}
		region = offer.Regions[0].Name
	}
	state.LaunchRegion = region
	state.HourlyPrice = offer.InstanceType.HourlyPrice()
	state.GPU = offer.InstanceType.GPUDescription

	m := in.machine().boot()
	if in.OperatorKeyName != "" {
		key, err := client.FindSSHKey(ctx, in.OperatorKeyName)
		if err != nil {
			return infer.CreateResponse[LambdaInstanceState]{}, err
		}
		if key == nil {
			return infer.CreateResponse[LambdaInstanceState]{}, cloudapi.Errorf("lambda", cloudapi.ReasonInvalid, "launch instance",
				"the operator's SSH key %q is not registered", in.OperatorKeyName)
		}
		m.AuthorizedKeys = append(m.AuthorizedKeys, key.PublicKey)
	}
	userData, err := boot.LambdaUserData(m)
	if err != nil {
		return infer.CreateResponse[LambdaInstanceState]{}, err
	}
	launch := lambda.LaunchRequest{RegionName: region, InstanceTypeName: in.InstanceType, SSHKeyNames: []string{in.SSHKeyName},
		Name: in.Name, UserData: userData}
	status(ctx, "launching instance %s (%s in %s)", in.Name, in.InstanceType, region)
	id, err := client.Launch(ctx, launch)
	if lambda.IsUserDataRefused(err) {
		// Without user data the host key cannot be installed before sshd starts: the key
		// the instance presents first is pinned for the rest of the job, and the dead-man's
		// switch is not installed at boot.
		plain := launch
		plain.UserData = ""
		info(ctx, "Lambda refused user data (%v); launching without it: the host key will be pinned on first use", err)
		state.HostKeyTrust = TrustFirstUse
		id, err = client.Launch(ctx, plain)
	}
	if err != nil {
		return infer.CreateResponse[LambdaInstanceState]{}, err
	}
	state.InstanceID = id
	info(ctx, "instance %s launched; waiting until it is active", id)

	wctx, cancel := context.WithTimeout(ctx, timeoutOr(in.ReadyTimeout, lambdaReadyTimeout))
	defer cancel()
	inst, err := client.WaitActive(wctx, id)
	if err != nil {
		return r.abandon(ctx, client, state, fmt.Errorf("wait for instance %s: %w", id, err))
	}
	state.Host = inst.Address()
	state.Status, state.Running = inst.Status, true
	if inst.InstanceType.PriceCentsPerHour > 0 {
		state.HourlyPrice = inst.InstanceType.HourlyPrice()
	}
	if state.HostKeyTrust == TrustFirstUse {
		addr := net.JoinHostPort(state.Host, strconv.Itoa(state.Port))
		key, err := scanHostKey(wctx, addr, timeoutOr(in.ReadyTimeout, lambdaReadyTimeout))
		if err != nil {
			return r.abandon(ctx, client, state, err)
		}
		state.HostPublicKey = key
		info(ctx, "pinned the host key instance %s presented first: %s", id, key)
	}
	info(ctx, "instance %s is active at %s, $%.2f/h", id, state.Host, state.HourlyPrice)
	return infer.CreateResponse[LambdaInstanceState]{ID: id, Output: state}, nil
}

// abandon terminates an instance that will not be used and returns cause; if it cannot be
// terminated, it stays in the stack (ResourceInitFailedError) so that a destroy removes it.
func (r *LambdaInstance) abandon(ctx context.Context, client *lambda.Client, state LambdaInstanceState, cause error) (infer.CreateResponse[LambdaInstanceState], error) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lambdaGoneTimeout)
	defer cancel()
	if err := client.Terminate(dctx, state.InstanceID); err != nil {
		return infer.CreateResponse[LambdaInstanceState]{ID: state.InstanceID, Output: state}, infer.ResourceInitFailedError{Reasons: []string{
			cause.Error(), fmt.Sprintf("terminate instance %s: %v", state.InstanceID, err)}}
	}
	return infer.CreateResponse[LambdaInstanceState]{}, cause
}

// Diff replaces the instance on any change of its inputs.
func (r *LambdaInstance) Diff(ctx context.Context, req infer.DiffRequest[LambdaInstanceArgs, LambdaInstanceState]) (infer.DiffResponse, error) {
	o, n := req.State.LambdaInstanceArgs.withDefaults(), req.Inputs.withDefaults()
	d := replaceOnAnyChange(map[string]bool{
		"name": o.Name != n.Name, "instanceType": o.InstanceType != n.InstanceType, "region": o.Region != n.Region,
		"sshKeyName": o.SSHKeyName != n.SSHKeyName, "operatorKeyName": o.OperatorKeyName != n.OperatorKeyName,
		"authorizedKeys": !slices.Equal(o.AuthorizedKeys, n.AuthorizedKeys), "hostPrivateKey": o.HostPrivateKey != n.HostPrivateKey,
		"sshUser": o.SSHUser != n.SSHUser, "sshPort": o.SSHPort != n.SSHPort, "workDir": o.WorkDir != n.WorkDir,
		"leaseSeconds": o.LeaseSeconds != n.LeaseSeconds, "deadline": o.Deadline != n.Deadline, "apiUrl": o.APIURL != n.APIURL,
		"readyTimeoutSeconds": o.ReadyTimeout != n.ReadyTimeout, "tags": !maps.Equal(o.Tags, n.Tags),
	})
	return infer.DiffResponse{HasChanges: d.has, DetailedDiff: d.detailed}, nil
}

// Read reports the instance as Lambda sees it; a terminated or unknown instance is gone.
func (r *LambdaInstance) Read(ctx context.Context, req infer.ReadRequest[LambdaInstanceArgs, LambdaInstanceState]) (infer.ReadResponse[LambdaInstanceArgs, LambdaInstanceState], error) {
	state := req.State
	if req.ID == "" {
		return infer.ReadResponse[LambdaInstanceArgs, LambdaInstanceState]{}, nil
	}
	client, err := lambdaClient(lambdaURL(state.APIURL))
	if err != nil {
		return infer.ReadResponse[LambdaInstanceArgs, LambdaInstanceState]{}, err
	}
	inst, err := client.Instance(ctx, req.ID)
	if cloudapi.IsNotFound(err) || (err == nil && inst.Status == lambda.StatusTerminated) {
		return infer.ReadResponse[LambdaInstanceArgs, LambdaInstanceState]{}, nil
	}
	if err != nil {
		return infer.ReadResponse[LambdaInstanceArgs, LambdaInstanceState]{}, err
	}
	state.InstanceID = inst.ID
	state.Status = inst.Status
	state.Running = inst.Status == lambda.StatusActive && inst.Address() != ""
	if state.Running {
		state.Host = inst.Address()
	}
	return infer.ReadResponse[LambdaInstanceArgs, LambdaInstanceState]{ID: req.ID, Inputs: req.Inputs, State: state}, nil
}

// Delete terminates the instance and waits until it is terminated. An instance that is
// already gone is success.
func (r *LambdaInstance) Delete(ctx context.Context, req infer.DeleteRequest[LambdaInstanceState]) (infer.DeleteResponse, error) {
	if req.ID == "" {
		return infer.DeleteResponse{}, nil
	}
	client, err := lambdaClient(lambdaURL(req.State.APIURL))
	if err != nil {
		return infer.DeleteResponse{}, err
	}
	status(ctx, "terminating instance %s", req.ID)
	if err := client.Terminate(ctx, req.ID); err != nil {
		return infer.DeleteResponse{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, lambdaGoneTimeout)
	defer cancel()
	if err := client.WaitTerminated(wctx, req.ID); err != nil {
		return infer.DeleteResponse{}, fmt.Errorf("instance %s was terminated but still runs: %w", req.ID, err)
	}
	info(ctx, "instance %s terminated", req.ID)
	return infer.DeleteResponse{}, nil
}

// LambdaSSHKey is an SSH public key registered with Lambda Cloud (token
// understudy:lambda:SSHKey): Lambda launches an instance with exactly one registered key,
// so each job registers its own under a job-specific name, and deleting the stack deletes
// it (after the instance, which depends on it).
type LambdaSSHKey struct{}

// LambdaSSHKeyArgs are the inputs of a key.
type LambdaSSHKeyArgs struct {
	Name      string            `pulumi:"name"`
	PublicKey string            `pulumi:"publicKey"`
	APIURL    string            `pulumi:"apiUrl,optional"`
	Tags      map[string]string `pulumi:"tags,optional"`
}

// LambdaSSHKeyState is a key's state.
type LambdaSSHKeyState struct {
	LambdaSSHKeyArgs
	KeyID string `pulumi:"keyId"`
}

// Annotate sets the resource's token and description.
func (k *LambdaSSHKey) Annotate(a infer.Annotator) {
	a.SetToken("lambda", "SSHKey")
	a.Describe(&k, "An SSH public key registered with Lambda Cloud under a job-specific name.")
}

// Annotate describes the inputs.
func (a *LambdaSSHKeyArgs) Annotate(an infer.Annotator) {
	an.Describe(&a.Name, "The key's name (at most 64 characters).")
	an.Describe(&a.PublicKey, "The public key, one authorized_keys line.")
	an.Describe(&a.APIURL, "Lambda's API base URL; default $LAMBDA_API_URL, else "+lambda.DefaultAPIURL+".")
	an.Describe(&a.Tags, "Labels of the job, kept in the stack's state.")
}

// Create registers the key.
func (k *LambdaSSHKey) Create(ctx context.Context, req infer.CreateRequest[LambdaSSHKeyArgs]) (infer.CreateResponse[LambdaSSHKeyState], error) {
	in := req.Inputs
	in.APIURL = lambdaURL(in.APIURL)
	if in.Name == "" || len(in.Name) > 64 {
		return infer.CreateResponse[LambdaSSHKeyState]{}, fmt.Errorf("name %q: want 1-64 characters", in.Name)
	}
	if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(in.PublicKey)); err != nil {
		return infer.CreateResponse[LambdaSSHKeyState]{}, fmt.Errorf("publicKey: %w", err)
	}
	state := LambdaSSHKeyState{LambdaSSHKeyArgs: in}
	if req.DryRun {
		return infer.CreateResponse[LambdaSSHKeyState]{Output: state}, nil
	}
	client, err := lambdaClient(in.APIURL)
	if err != nil {
		return infer.CreateResponse[LambdaSSHKeyState]{}, err
	}
	key, err := client.AddSSHKey(ctx, in.Name, in.PublicKey)
	if err != nil {
		return infer.CreateResponse[LambdaSSHKeyState]{}, err
	}
	state.KeyID = key.ID
	return infer.CreateResponse[LambdaSSHKeyState]{ID: key.ID, Output: state}, nil
}

// Diff replaces the key on any change.
func (k *LambdaSSHKey) Diff(ctx context.Context, req infer.DiffRequest[LambdaSSHKeyArgs, LambdaSSHKeyState]) (infer.DiffResponse, error) {
	o, n := req.State.LambdaSSHKeyArgs, req.Inputs
	d := replaceOnAnyChange(map[string]bool{"name": o.Name != n.Name, "publicKey": o.PublicKey != n.PublicKey,
		"apiUrl": lambdaURL(o.APIURL) != lambdaURL(n.APIURL), "tags": !maps.Equal(o.Tags, n.Tags)})
	return infer.DiffResponse{HasChanges: d.has, DetailedDiff: d.detailed}, nil
}

// Read reports whether the key is still registered.
func (k *LambdaSSHKey) Read(ctx context.Context, req infer.ReadRequest[LambdaSSHKeyArgs, LambdaSSHKeyState]) (infer.ReadResponse[LambdaSSHKeyArgs, LambdaSSHKeyState], error) {
	if req.ID == "" {
		return infer.ReadResponse[LambdaSSHKeyArgs, LambdaSSHKeyState]{}, nil
	}
	client, err := lambdaClient(lambdaURL(req.State.APIURL))
	if err != nil {
		return infer.ReadResponse[LambdaSSHKeyArgs, LambdaSSHKeyState]{}, err
	}
	keys, err := client.SSHKeys(ctx)
	if err != nil {
		return infer.ReadResponse[LambdaSSHKeyArgs, LambdaSSHKeyState]{}, err
	}
	for _, key := range keys {
		if key.ID == req.ID {
			return infer.ReadResponse[LambdaSSHKeyArgs, LambdaSSHKeyState]{ID: req.ID, Inputs: req.Inputs, State: req.State}, nil
		}
	}
	return infer.ReadResponse[LambdaSSHKeyArgs, LambdaSSHKeyState]{}, nil
}

// Delete deletes the key. Lambda refuses while an instance that uses it is not yet
// terminated, so a key in use is retried for a while.
func (k *LambdaSSHKey) Delete(ctx context.Context, req infer.DeleteRequest[LambdaSSHKeyState]) (infer.DeleteResponse, error) {
	if req.ID == "" {
		return infer.DeleteResponse{}, nil
	}
	client, err := lambdaClient(lambdaURL(req.State.APIURL))
	if err != nil {
		return infer.DeleteResponse{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, lambdaGoneTimeout)
	defer cancel()
	err = cloudapi.Poll(wctx, pollInterval, func() (bool, error) {
		err := client.DeleteSSHKey(wctx, req.ID)
		if cloudapi.ReasonOf(err) == cloudapi.ReasonConflict {
			status(ctx, "SSH key %s is still in use; waiting", req.State.Name)
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		return infer.DeleteResponse{}, fmt.Errorf("delete SSH key %s: %w", req.State.Name, err)
	}
	return infer.DeleteResponse{}, nil
}
