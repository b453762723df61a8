// Package runpod is a client of the RunPod API: REST v2 for pods and the GPU catalogue,
// and the GraphQL API for what v2 lacks (spot pods and their bid prices).
//
// Creating a pod is the dangerous call: RunPod has been seen to answer 500 although the
// pod was made. CreatePod and CreateSpotPod therefore look the pod up by its (unique) name
// after any ambiguous failure, before they try again, so that an error never leaks a pod.
//
// The package imports only the standard library and provider/cloudapi.
package runpod

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/understudy-ai/training-service/provider/cloudapi"
)

// DefaultAPIURL is RunPod's API; REST paths begin with /v2/ under it and GraphQL is at
// /graphql.
const DefaultAPIURL = "https://api.runpod.io"

// Pod statuses.
const (
	StatusProvisioning = "PROVISIONING"
	StatusStarting     = "STARTING"
	StatusRunning      = "RUNNING"
	StatusExited       = "EXITED"
	StatusError        = "ERROR"
	StatusTerminated   = "TERMINATED"
)

// Config configures a Client.
type Config struct {
	// APIURL is the API's base URL; default DefaultAPIURL.
	APIURL string
	// GraphQLURL is the GraphQL endpoint; default APIURL + "/graphql".
	GraphQLURL string
	// APIKey is the bearer token.
	APIKey string
	// HTTP does the requests; nil means a default client.
	HTTP *http.Client
	// Retry shapes the retries of every call.
	Retry cloudapi.RetryPolicy
	// PollInterval is how often WaitRunning and WaitGone look; default 5s.
	PollInterval time.Duration
}

// Client calls the RunPod API. It is safe for concurrent use.
type Client struct {
	rest *cloudapi.Client
	gql  *cloudapi.Client
	poll time.Duration
}

// New returns a client for cfg.
func New(cfg Config) *Client {
	base := strings.TrimRight(cfg.APIURL, "/")
	if base == "" {
		base = DefaultAPIURL
	}
	base = strings.TrimSuffix(base, "/v2") // paths carry /v2 themselves; never double it
	gqlURL := strings.TrimRight(cfg.GraphQLURL, "/")
	if gqlURL == "" {
		gqlURL = base + "/graphql"
	}
	poll := cfg.PollInterval
	if poll <= 0 {
		poll = 5 * time.Second
	}
	mk := func(u string) *cloudapi.Client {
		return &cloudapi.Client{Provider: "runpod", BaseURL: u, Token: cfg.APIKey, HTTP: cfg.HTTP, Decode: decodeProblem,
			Retry: cfg.Retry, UserAgent: "understudy-training-service"}
	}
	return &Client{rest: mk(base), gql: mk(gqlURL), poll: poll}
}

// GPU is a pod's GPU request.
type GPU struct {
	ID    string `json:"id"`
	Count int    `json:"count,omitempty"`
}

// CreatePodRequest is the body of POST /v2/pods (fields the service uses).
type CreatePodRequest struct {
	Name          string            `json:"name"`
	Image         string            `json:"image"`
	GPU           *GPU              `json:"gpu,omitempty"`
	Cloud         string            `json:"cloud,omitempty"`
	DataCenterIDs []string          `json:"dataCenterIds,omitempty"`
	Ports         []string          `json:"ports,omitempty"`
	Env           map[string]string `json:"env,omitempty"`
	Disk          int               `json:"disk,omitempty"`
	Args          string            `json:"args,omitempty"`
}

// SSHEndpoint is one way to reach a pod over SSH.
type SSHEndpoint struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Username string `json:"username"`
}

// Pod is a pod as GET /v2/pods/{id} describes it (fields the service uses).
type Pod struct {
	ID           string            `json:"id"`
	Name         string            `json:"name"`
	Status       string            `json:"status"`
	Actions      []string          `json:"actions"`
	Image        string            `json:"image"`
	Env          map[string]string `json:"env"`
	Cloud        string            `json:"cloud"`
	DataCenterID *string           `json:"dataCenterId"`
	GPU          *GPU              `json:"gpu"`
	// Cost is USD per hour; 0 when EXITED or TERMINATED.
	Cost float64 `json:"cost"`
	SSH  struct {
		Direct *SSHEndpoint `json:"direct"`
		Proxy  *SSHEndpoint `json:"proxy"`
	} `json:"ssh"`
	CreatedAt string `json:"createdAt"`
}

// Running reports whether the pod runs and can be reached directly over SSH.
func (p *Pod) Running() bool {
	return p.Status == StatusRunning && p.SSH.Direct != nil && p.SSH.Direct.Host != "" && p.SSH.Direct.Port > 0
}

// GPUType is one entry of the GPU catalogue.
type GPUType struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Memory int    `json:"memory"`
	Price  struct {
		Secure    float64 `json:"secure"`
		Community float64 `json:"community"`
	} `json:"price"`
	Secure    bool `json:"secure"`
	Community bool `json:"community"`
}

// HourlyPrice is the list price of count GPUs in cloud (SECURE or COMMUNITY).
func (g *GPUType) HourlyPrice(cloud string, count int) float64 {
	if count < 1 {
		count = 1
	}
	if strings.EqualFold(cloud, "COMMUNITY") {
		return g.Price.Community * float64(count)
	}
	return g.Price.Secure * float64(count)
}

// createAttempts bounds how often a create is tried after ambiguous failures.
const createAttempts = 3

// CreatePod creates a pod. After an ambiguous failure it looks the pod up by name and
// returns it when it exists, so req.Name must be unique to this request.
func (c *Client) CreatePod(ctx context.Context, req CreatePodRequest) (*Pod, error) {
	var lastErr error
	for attempt := 1; attempt <= createAttempts; attempt++ {
		var pod Pod
		_, err := c.rest.Do(ctx, cloudapi.Request{Method: http.MethodPost, Path: "/v2/pods", Body: req, Op: "create pod"}, &pod)
		if err == nil {
			return &pod, nil
		}
		if !ambiguous(err) {
			return nil, err
		}
		lastErr = err
		found, ferr := c.FindPodByName(ctx, req.Name)
		if ferr != nil {
			return nil, fmt.Errorf("%w; then looking the pod up by name failed: %w", err, ferr)
		}
		if found != nil {
			return found, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func ambiguous(err error) bool {
	var e *cloudapi.Error
	return errors.As(err, &e) && e.Ambiguous
}

// GetPod returns a pod; a cloudapi.ReasonNotFound error when it does not exist.
func (c *Client) GetPod(ctx context.Context, id string) (*Pod, error) {
	var pod Pod
	_, err := c.rest.Do(ctx, cloudapi.Request{Method: http.MethodGet, Path: "/v2/pods/" + url.PathEscape(id), Op: "get pod", Idempotent: true}, &pod)
	if err != nil {
		return nil, err
	}
	return &pod, nil
}

// ListPods returns every pod of the account.
func (c *Client) ListPods(ctx context.Context) ([]Pod, error) {
	var out struct {
		Pods []Pod `json:"pods"`
	}
	_, err := c.rest.Do(ctx, cloudapi.Request{Method: http.MethodGet, Path: "/v2/pods", Op: "list pods", Idempotent: true}, &out)
	return out.Pods, err
}

// FindPodByName returns the live pod named name, or nil when there is none.
func (c *Client) FindPodByName(ctx context.Context, name string) (*Pod, error) {
	pods, err := c.ListPods(ctx)
	if err != nil {
		return nil, err
	}
	for i := range pods {
		if pods[i].Name == name && pods[i].Status != StatusTerminated {
			return &pods[i], nil
		}
	}
	return nil, nil
}

// DeletePod terminates a pod for good. A pod that is already gone is success.
func (c *Client) DeletePod(ctx context.Context, id string) error {
	_, err := c.rest.Do(ctx, cloudapi.Request{Method: http.MethodDelete, Path: "/v2/pods/" + url.PathEscape(id), Op: "delete pod",
		Idempotent: true, NotFoundOK: true}, nil)
	return err
}

// WaitRunning polls the pod until it runs with a direct SSH address. A pod that exits,
// fails or is terminated meanwhile is an error.
func (c *Client) WaitRunning(ctx context.Context, id string) (*Pod, error) {
	var pod *Pod
	err := cloudapi.Poll(ctx, c.poll, func() (bool, error) {
		p, err := c.GetPod(ctx, id)
		if err != nil {
			return false, err
		}
		pod = p
		switch p.Status {
		case StatusExited, StatusError, StatusTerminated:
			return false, cloudapi.Errorf("runpod", cloudapi.ReasonUnavailable, "wait for pod",
				"pod %s became %s before it ran", id, p.Status)
		}
		// RUNNING without ssh.direct: 22/tcp is exposed but not mapped yet.
		return p.Running(), nil
	})
	if err != nil && ctx.Err() != nil && pod != nil {
		err = cloudapi.Errorf("runpod", cloudapi.ReasonUnavailable, "wait for pod", "pod %s is still %s: %v", id, pod.Status, err)
	}
	return pod, err
}

// WaitGone polls until the pod no longer exists (or is TERMINATED).
func (c *Client) WaitGone(ctx context.Context, id string) error {
	status := ""
	err := cloudapi.Poll(ctx, c.poll, func() (bool, error) {
		pod, err := c.GetPod(ctx, id)
		if cloudapi.IsNotFound(err) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		status = pod.Status
		return pod.Status == StatusTerminated, nil
	})
	if err != nil && ctx.Err() != nil {
		err = cloudapi.Errorf("runpod", cloudapi.ReasonUnavailable, "wait for pod deletion", "pod %s is still %s: %v", id, status, err)
	}
	return err
}

// GPUType returns one entry of the catalogue; cloudapi.ReasonNotFound for an unknown id.
func (c *Client) GPUType(ctx context.Context, id string) (*GPUType, error) {
	var g GPUType
	_, err := c.rest.Do(ctx, cloudapi.Request{Method: http.MethodGet, Path: "/v2/catalog/gpus/" + url.PathEscape(id),
		Op: "read GPU catalogue", Idempotent: true}, &g)
	if err != nil {
		return nil, err
	}
	return &g, nil
}

// capacityText matches what RunPod says when it has no machine for a request; its 400s
// carry no machine-readable code, only the detail.
var capacityText = regexp.MustCompile(`(?i)no longer any instances available|no (gpus?|instances?|machines?|pods?) (are )?available|not enough (gpus?|capacity|machines?)|insufficient capacity|no capacity|out of stock|there are no .*available`)

var quotaText = regexp.MustCompile(`(?i)insufficient (funds|balance|credit)|balance (is )?too low|low balance|spend limit|quota`)

// reasonOfText classifies a RunPod error message.
func reasonOfText(msg string) cloudapi.Reason {
	switch {
	case capacityText.MatchString(msg):
		return cloudapi.ReasonNoCapacity
	case quotaText.MatchString(msg):
		return cloudapi.ReasonQuota
	}
	return ""
}

// decodeProblem reads an RFC 9457 problem body.
func decodeProblem(status int, body []byte) *cloudapi.Error {
	var p struct {
		Title  string   `json:"title"`
		Detail string   `json:"detail"`
		Errors []string `json:"errors"`
	}
	e := &cloudapi.Error{}
	if json.Unmarshal(body, &p) != nil || (p.Title == "" && p.Detail == "") {
		e.Message = strings.TrimSpace(string(body))
		if len(e.Message) > 300 {
			e.Message = e.Message[:300]
		}
		if e.Message == "" {
			e.Message = http.StatusText(status)
		}
	} else {
		e.Message = p.Title
		if p.Detail != "" {
			e.Message = p.Detail
		}
		if len(p.Errors) > 0 {
			e.Message += " (" + strings.Join(p.Errors, "; ") + ")"
		}
	}
	if status == http.StatusBadRequest || status == http.StatusConflict || status == http.StatusServiceUnavailable {
		e.Reason = reasonOfText(e.Message)
	}
	if status == http.StatusPaymentRequired {
		e.Reason = cloudapi.ReasonQuota
	}
	return e
}
