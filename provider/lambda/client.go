// Package lambda is a client of the Lambda Cloud API v1: instance types, instances (launch,
// read, terminate) and SSH keys.
//
// Lambda limits an account to about one request a second and one launch every 12 seconds.
// The client spaces its requests to match, across every process of the host (each Pulumi
// engine run starts its own provider process), and still honours a 429 with backoff.
// A launch or key registration that failed ambiguously is followed by a look-up by name
// before any retry, so that an error never leaks an instance.
//
// The package imports only the standard library and provider/cloudapi.
package lambda

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/understudy-ai/training-service/provider/cloudapi"
)

// DefaultAPIURL is Lambda Cloud's API (a newer host, cloud.lambda.ai, is reported; the URL
// is configurable).
const DefaultAPIURL = "https://cloud.lambdalabs.com/api/v1"

// Instance statuses.
const (
	StatusBooting     = "booting"
	StatusActive      = "active"
	StatusUnhealthy   = "unhealthy"
	StatusTerminating = "terminating"
	StatusTerminated  = "terminated"
)

// Error codes of the API.
const (
	CodeInvalidAPIKey        = "global/invalid-api-key"
	CodeAccountInactive      = "global/account-inactive"
	CodeInvalidParameters    = "global/invalid-parameters"
	CodeObjectDoesNotExist   = "global/object-does-not-exist"
	CodeQuotaExceeded        = "global/quota-exceeded"
	CodeInsufficientCapacity = "instance-operations/launch/insufficient-capacity"
	CodeKeyInUse             = "ssh-keys/key-in-use"
)

// Config configures a Client.
type Config struct {
	// APIURL is the API's base URL, ending in /api/v1; default DefaultAPIURL.
	APIURL string
	// APIKey is the bearer token.
	APIKey string
	// HTTP does the requests; nil means a default client.
	HTTP *http.Client
	// Retry shapes the retries of every call.
	Retry cloudapi.RetryPolicy
	// PollInterval is how often WaitActive looks; default 5s.
	PollInterval time.Duration
	// RequestInterval and LaunchInterval space requests and launches; defaults 1s and 12s.
	RequestInterval, LaunchInterval time.Duration
	// RateDir holds the cross-process rate limit files; default cloudapi.RateDir().
	RateDir string
}

// Client calls the Lambda Cloud API. It is safe for concurrent use.
type Client struct {
	api    *cloudapi.Client
	launch cloudapi.Limiter
	poll   time.Duration
}

// New returns a client for cfg.
func New(cfg Config) *Client {
	base := strings.TrimRight(cfg.APIURL, "/")
	if base == "" {
		base = DefaultAPIURL
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 5 * time.Second
	}
	if cfg.RequestInterval <= 0 {
		cfg.RequestInterval = time.Second
	}
	if cfg.LaunchInterval <= 0 {
		cfg.LaunchInterval = 12 * time.Second
	}
	if cfg.RateDir == "" {
		cfg.RateDir = cloudapi.RateDir()
	}
	// One account's limits apply to every client of that account and host.
	host := "default"
	if u, err := url.Parse(base); err == nil && u.Host != "" {
		host = strings.NewReplacer(":", "_", "/", "_").Replace(u.Host)
	}
	return &Client{
		api: &cloudapi.Client{Provider: "lambda", BaseURL: base, Token: cfg.APIKey, HTTP: cfg.HTTP, Decode: decodeError,
			Retry: cfg.Retry, UserAgent: "understudy-training-service",
			Limiter: &cloudapi.FileInterval{Path: filepath.Join(cfg.RateDir, "lambda-"+host+"-requests"), Every: cfg.RequestInterval}},
		launch: &cloudapi.FileInterval{Path: filepath.Join(cfg.RateDir, "lambda-"+host+"-launches"), Every: cfg.LaunchInterval},
		poll:   cfg.PollInterval,
	}
}

// Region is a Lambda region.
type Region struct {
	Name        string `json:"name"`
	Description string `json:"description"`
}

// InstanceType is a machine type with its price.
type InstanceType struct {
	Name              string `json:"name"`
	Description       string `json:"description"`
	GPUDescription    string `json:"gpu_description"`
	PriceCentsPerHour int    `json:"price_cents_per_hour"`
	Specs             struct {
		VCPUs      int `json:"vcpus"`
		MemoryGiB  int `json:"memory_gib"`
		StorageGiB int `json:"storage_gib"`
		GPUs       int `json:"gpus"`
	} `json:"specs"`
}

// UnmarshalJSON accepts price_cents_per_hour as a number or a string (the spec's example
// has a string).
func (t *InstanceType) UnmarshalJSON(b []byte) error {
	type plain InstanceType
	var raw struct {
		plain
		Price json.RawMessage `json:"price_cents_per_hour"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*t = InstanceType(raw.plain)
	p := strings.Trim(string(raw.Price), `" `)
	if p != "" && p != "null" {
		var n float64
		if err := json.Unmarshal([]byte(p), &n); err != nil {
			return fmt.Errorf("price_cents_per_hour %s: %w", raw.Price, err)
		}
		t.PriceCentsPerHour = int(n)
	}
	return nil
}

// HourlyPrice is the price in USD per hour.
func (t InstanceType) HourlyPrice() float64 { return float64(t.PriceCentsPerHour) / 100 }

// Offer is an instance type and the regions with capacity for it now.
type Offer struct {
	InstanceType InstanceType `json:"instance_type"`
	Regions      []Region     `json:"regions_with_capacity_available"`
}

// Instance is a Lambda instance.
type Instance struct {
	ID           string       `json:"id"`
	Name         *string      `json:"name"`
	IP           *string      `json:"ip"`
	Hostname     *string      `json:"hostname"`
	Status       string       `json:"status"`
	SSHKeyNames  []string     `json:"ssh_key_names"`
	Region       *Region      `json:"region"`
	InstanceType InstanceType `json:"instance_type"`
}

// NameOr returns the instance's name, or "".
func (i *Instance) NameOr() string {
	if i.Name == nil {
		return ""
	}
	return *i.Name
}

// Address is the instance's IP, or "" while it has none.
func (i *Instance) Address() string {
	if i.IP == nil {
		return ""
	}
	return *i.IP
}

// SSHKey is a registered SSH key.
type SSHKey struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	PublicKey string `json:"public_key"`
}

// LaunchRequest is the body of POST /instance-operations/launch.
type LaunchRequest struct {
	RegionName       string   `json:"region_name"`
	InstanceTypeName string   `json:"instance_type_name"`
	SSHKeyNames      []string `json:"ssh_key_names"`
	FileSystemNames  []string `json:"file_system_names"`
	Quantity         int      `json:"quantity"`
	Name             string   `json:"name"`
	// UserData is cloud-init user data. The spec copy does not list it; newer API versions
	// accept it. See IsUserDataRefused.
	UserData string `json:"user_data,omitempty"`
}

// InstanceTypes returns the catalogue, keyed by type name.
func (c *Client) InstanceTypes(ctx context.Context) (map[string]Offer, error) {
	var out struct {
		Data map[string]Offer `json:"data"`
	}
	_, err := c.api.Do(ctx, cloudapi.Request{Method: http.MethodGet, Path: "/instance-types", Op: "read instance types", Idempotent: true}, &out)
	return out.Data, err
}

// launchAttempts bounds how often a launch is tried after ambiguous failures.
const launchAttempts = 3

// Launch launches one instance and returns its id. After an ambiguous failure it looks the
// instance up by name, so req.Name must be unique to this request.
func (c *Client) Launch(ctx context.Context, req LaunchRequest) (string, error) {
	if req.Quantity == 0 {
		req.Quantity = 1
	}
	if req.FileSystemNames == nil {
		req.FileSystemNames = []string{}
	}
	var lastErr error
	for attempt := 1; attempt <= launchAttempts; attempt++ {
		var out struct {
			Data struct {
				InstanceIDs []string `json:"instance_ids"`
			} `json:"data"`
		}
		_, err := c.api.Do(ctx, cloudapi.Request{Method: http.MethodPost, Path: "/instance-operations/launch", Body: req,
			Op: "launch instance", Limiter: c.launch}, &out)
		if err == nil {
			if len(out.Data.InstanceIDs) != 1 {
				return "", cloudapi.Errorf("lambda", cloudapi.ReasonUnknown, "launch instance", "the answer names %d instances, want 1", len(out.Data.InstanceIDs))
			}
			return out.Data.InstanceIDs[0], nil
		}
		if !isAmbiguous(err) {
			return "", err
		}
		lastErr = err
		found, ferr := c.FindInstanceByName(ctx, req.Name)
		if ferr != nil {
			return "", fmt.Errorf("%w; then looking the instance up by name failed: %w", err, ferr)
		}
		if found != nil {
			return found.ID, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return "", lastErr
}

func isAmbiguous(err error) bool {
	var e *cloudapi.Error
	return errors.As(err, &e) && e.Ambiguous
}

// IsUserDataRefused reports whether a launch failed because the API does not take
// user_data, so that the caller can launch without it.
func IsUserDataRefused(err error) bool {
	var e *cloudapi.Error
	return errors.As(err, &e) && e.Status == http.StatusBadRequest && slices.Contains(e.Fields, "user_data")
}

// Instance returns one instance; cloudapi.ReasonNotFound when it does not exist.
func (c *Client) Instance(ctx context.Context, id string) (*Instance, error) {
	var out struct {
		Data Instance `json:"data"`
	}
	_, err := c.api.Do(ctx, cloudapi.Request{Method: http.MethodGet, Path: "/instances/" + url.PathEscape(id), Op: "get instance", Idempotent: true}, &out)
	if err != nil {
		return nil, err
	}
	return &out.Data, nil
}

// Instances lists the account's instances.
func (c *Client) Instances(ctx context.Context) ([]Instance, error) {
	var out struct {
		Data []Instance `json:"data"`
	}
	_, err := c.api.Do(ctx, cloudapi.Request{Method: http.MethodGet, Path: "/instances", Op: "list instances", Idempotent: true}, &out)
	return out.Data, err
}

// FindInstanceByName returns the instance named name that is not terminated, or nil.
func (c *Client) FindInstanceByName(ctx context.Context, name string) (*Instance, error) {
	list, err := c.Instances(ctx)
	if err != nil {
		return nil, err
	}
	for i := range list {
		if list[i].NameOr() == name && list[i].Status != StatusTerminated {
			return &list[i], nil
		}
	}
	return nil, nil
}

// Terminate terminates instances. Instances that are already gone are success.
func (c *Client) Terminate(ctx context.Context, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := c.api.Do(ctx, cloudapi.Request{Method: http.MethodPost, Path: "/instance-operations/terminate",
		Body: map[string]any{"instance_ids": ids}, Op: "terminate instance", Idempotent: true, NotFoundOK: true}, nil)
	return err
}

// WaitActive polls the instance until it is active with an IP address. An instance that
// becomes unhealthy or is terminated meanwhile is an error.
func (c *Client) WaitActive(ctx context.Context, id string) (*Instance, error) {
	var inst *Instance
	err := cloudapi.Poll(ctx, c.poll, func() (bool, error) {
		in, err := c.Instance(ctx, id)
		if err != nil {
			return false, err
		}
		inst = in
		switch in.Status {
		case StatusUnhealthy, StatusTerminating, StatusTerminated:
			return false, cloudapi.Errorf("lambda", cloudapi.ReasonUnavailable, "wait for instance",
				"instance %s became %s before it was active", id, in.Status)
		}
		return in.Status == StatusActive && in.Address() != "", nil
	})
	if err != nil && ctx.Err() != nil && inst != nil {
		err = cloudapi.Errorf("lambda", cloudapi.ReasonUnavailable, "wait for instance", "instance %s is still %s: %v", id, inst.Status, err)
	}
	return inst, err
}

// WaitTerminated polls until the instance is terminated or gone.
func (c *Client) WaitTerminated(ctx context.Context, id string) error {
	status := ""
	err := cloudapi.Poll(ctx, c.poll, func() (bool, error) {
		in, err := c.Instance(ctx, id)
		if cloudapi.IsNotFound(err) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		status = in.Status
		return in.Status == StatusTerminated, nil
	})
	if err != nil && ctx.Err() != nil {
		err = cloudapi.Errorf("lambda", cloudapi.ReasonUnavailable, "wait for termination", "instance %s is still %s: %v", id, status, err)
	}
	return err
}

// SSHKeys lists the registered SSH keys.
func (c *Client) SSHKeys(ctx context.Context) ([]SSHKey, error) {
	var out struct {
		Data []SSHKey `json:"data"`
	}
	_, err := c.api.Do(ctx, cloudapi.Request{Method: http.MethodGet, Path: "/ssh-keys", Op: "list SSH keys", Idempotent: true}, &out)
	return out.Data, err
}

// FindSSHKey returns the key named name, or nil.
func (c *Client) FindSSHKey(ctx context.Context, name string) (*SSHKey, error) {
	keys, err := c.SSHKeys(ctx)
	if err != nil {
		return nil, err
	}
	for i := range keys {
		if keys[i].Name == name {
			return &keys[i], nil
		}
	}
	return nil, nil
}

// AddSSHKey registers publicKey under name. After an ambiguous failure, or when a key of
// that name exists already with the same public key, it returns the registered key.
func (c *Client) AddSSHKey(ctx context.Context, name, publicKey string) (*SSHKey, error) {
	var out struct {
		Data SSHKey `json:"data"`
	}
	_, err := c.api.Do(ctx, cloudapi.Request{Method: http.MethodPost, Path: "/ssh-keys",
		Body: map[string]string{"name": name, "public_key": publicKey}, Op: "register SSH key"}, &out)
	if err == nil {
		return &out.Data, nil
	}
	var ce *cloudapi.Error
	if !errors.As(err, &ce) || !(ce.Ambiguous || ce.Code == CodeInvalidParameters) {
		return nil, err
	}
	found, ferr := c.FindSSHKey(ctx, name)
	if ferr != nil {
		return nil, fmt.Errorf("%w; then looking the key up by name failed: %w", err, ferr)
	}
	if found != nil && sameKey(found.PublicKey, publicKey) {
		return found, nil
	}
	return nil, err
}

// sameKey compares the type and base64 parts of two authorized_keys lines.
func sameKey(a, b string) bool {
	fa, fb := strings.Fields(a), strings.Fields(b)
	return len(fa) >= 2 && len(fb) >= 2 && fa[0] == fb[0] && fa[1] == fb[1]
}

// DeleteSSHKey deletes a registered key. A key that is already gone is success.
func (c *Client) DeleteSSHKey(ctx context.Context, id string) error {
	_, err := c.api.Do(ctx, cloudapi.Request{Method: http.MethodDelete, Path: "/ssh-keys/" + url.PathEscape(id),
		Op: "delete SSH key", Idempotent: true, NotFoundOK: true}, nil)
	return err
}

// decodeError reads Lambda's error envelope and classifies it by code.
func decodeError(status int, body []byte) *cloudapi.Error {
	type apiErr struct {
		Code       string `json:"code"`
		Message    string `json:"message"`
		Suggestion string `json:"suggestion"`
	}
	var env struct {
		Error       apiErr            `json:"error"`
		FieldErrors map[string]apiErr `json:"field_errors"`
	}
	e := &cloudapi.Error{}
	if json.Unmarshal(body, &env) != nil || env.Error.Code == "" {
		e.Message = strings.TrimSpace(string(body))
		if len(e.Message) > 300 {
			e.Message = e.Message[:300]
		}
		return e
	}
	e.Code = env.Error.Code
	e.Message = env.Error.Message
	if env.Error.Suggestion != "" {
		e.Message += " (" + env.Error.Suggestion + ")"
	}
	fields := make([]string, 0, len(env.FieldErrors))
	for f := range env.FieldErrors {
		fields = append(fields, f)
	}
	sort.Strings(fields)
	for _, f := range fields {
		e.Message += fmt.Sprintf("; %s: %s", f, env.FieldErrors[f].Message)
	}
	e.Fields = fields
	switch e.Code {
	case CodeInvalidAPIKey:
		e.Reason = cloudapi.ReasonAuth
	case CodeAccountInactive, CodeQuotaExceeded:
		e.Reason = cloudapi.ReasonQuota
	case CodeInsufficientCapacity:
		e.Reason = cloudapi.ReasonNoCapacity
	case CodeObjectDoesNotExist:
		e.Reason = cloudapi.ReasonNotFound
	case CodeInvalidParameters:
		e.Reason = cloudapi.ReasonInvalid
	case CodeKeyInUse:
		e.Reason = cloudapi.ReasonConflict
	}
	return e
}
