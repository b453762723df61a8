package runpod

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/understudy-ai/training-service/provider/cloudapi"
)

// REST v2 has no spot pods: they are made through GraphQL, which RunPod stopped documenting
// in May 2026. Callers treat spot as best effort and fall back to on-demand when the job
// allows it.

type gqlError struct {
	Message string `json:"message"`
}

// graphql runs one GraphQL operation. GraphQL reports failures as HTTP 200 with errors[].
func (c *Client) graphql(ctx context.Context, op, query string, vars map[string]any, idempotent bool, out any) error {
	var resp struct {
		Data   json.RawMessage `json:"data"`
		Errors []gqlError      `json:"errors"`
	}
	_, err := c.gql.Do(ctx, cloudapi.Request{Method: http.MethodPost, Body: map[string]any{"query": query, "variables": vars},
		Op: op, Idempotent: idempotent}, &resp)
	if err != nil {
		return err
	}
	if len(resp.Errors) > 0 {
		msgs := make([]string, len(resp.Errors))
		for i, e := range resp.Errors {
			msgs[i] = e.Message
		}
		msg := strings.Join(msgs, "; ")
		reason := reasonOfText(msg)
		low := strings.ToLower(msg)
		switch {
		case reason != "":
		case strings.Contains(low, "unauthorized") || strings.Contains(low, "api key"):
			reason = cloudapi.ReasonAuth
		case strings.Contains(low, "not found") || strings.Contains(low, "does not exist"):
			reason = cloudapi.ReasonNotFound
		default:
			reason = cloudapi.ReasonInvalid
		}
		return &cloudapi.Error{Provider: "runpod", Op: op, Status: http.StatusOK, Reason: reason, Message: msg}
	}
	if out != nil && len(resp.Data) > 0 {
		if err := json.Unmarshal(resp.Data, out); err != nil {
			return &cloudapi.Error{Provider: "runpod", Op: op, Reason: cloudapi.ReasonUnknown, Message: "decode answer: " + err.Error()}
		}
	}
	return nil
}

// SpotPrice is what the catalogue says about interruptible GPUs of one type.
type SpotPrice struct {
	MinimumBidPerGPU float64 // USD per hour per GPU
	OnDemandPerGPU   float64 // the uninterruptible price, USD per hour per GPU
	StockStatus      string  // "High", "Medium", "Low", "None" or ""
}

const gpuTypesQuery = `query GpuTypes($id: String, $gpuCount: Int!) {
  gpuTypes(input: {id: $id}) {
    id
    displayName
    lowestPrice(input: {gpuCount: $gpuCount}) { minimumBidPrice uninterruptablePrice stockStatus }
  }
}`

// SpotPrice reads the current minimum bid for count GPUs of gpuTypeID.
func (c *Client) SpotPrice(ctx context.Context, gpuTypeID string, count int) (SpotPrice, error) {
	if count < 1 {
		count = 1
	}
	var data struct {
		GPUTypes []struct {
			ID          string `json:"id"`
			LowestPrice *struct {
				MinimumBidPrice      *float64 `json:"minimumBidPrice"`
				UninterruptablePrice *float64 `json:"uninterruptablePrice"`
				StockStatus          *string  `json:"stockStatus"`
			} `json:"lowestPrice"`
		} `json:"gpuTypes"`
	}
	if err := c.graphql(ctx, "read spot price", gpuTypesQuery, map[string]any{"id": gpuTypeID, "gpuCount": count}, true, &data); err != nil {
		return SpotPrice{}, err
	}
	for _, g := range data.GPUTypes {
		if g.ID != gpuTypeID || g.LowestPrice == nil {
			continue
		}
		var p SpotPrice
		if g.LowestPrice.MinimumBidPrice != nil {
			p.MinimumBidPerGPU = *g.LowestPrice.MinimumBidPrice
		}
		if g.LowestPrice.UninterruptablePrice != nil {
			p.OnDemandPerGPU = *g.LowestPrice.UninterruptablePrice
		}
		if g.LowestPrice.StockStatus != nil {
			p.StockStatus = *g.LowestPrice.StockStatus
		}
		if p.MinimumBidPerGPU <= 0 {
			return p, cloudapi.Errorf("runpod", cloudapi.ReasonNoCapacity, "read spot price", "no spot bid price for %q (stock %q)", gpuTypeID, p.StockStatus)
		}
		return p, nil
	}
	return SpotPrice{}, cloudapi.Errorf("runpod", cloudapi.ReasonInvalid, "read spot price", "unknown GPU type %q", gpuTypeID)
}

// SpotPodRequest is a spot (interruptible) pod.
type SpotPodRequest struct {
	Name          string
	Image         string
	GPUTypeID     string
	GPUCount      int
	Cloud         string // SECURE or COMMUNITY
	DataCenterID  string // empty: any
	BidPerGPU     float64
	Env           map[string]string
	Args          string
	ContainerDisk int
}

const rentInterruptableMutation = `mutation RentInterruptable($input: PodRentInterruptableInput!) {
  podRentInterruptable(input: $input) { id name costPerHr machineId desiredStatus }
}`

// CreateSpotPod creates an interruptible pod at req.BidPerGPU and returns its id and price
// per hour. After an ambiguous failure it looks the pod up by name before trying again.
func (c *Client) CreateSpotPod(ctx context.Context, req SpotPodRequest) (string, float64, error) {
	count := max(req.GPUCount, 1)
	env := make([]map[string]string, 0, len(req.Env))
	keys := make([]string, 0, len(req.Env))
	for k := range req.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, map[string]string{"key": k, "value": req.Env[k]})
	}
	input := map[string]any{
		"name":              req.Name,
		"imageName":         req.Image,
		"gpuTypeId":         req.GPUTypeID,
		"gpuCount":          count,
		"bidPerGpu":         req.BidPerGPU,
		"cloudType":         strings.ToUpper(req.Cloud),
		"ports":             "22/tcp",
		"env":               env,
		"dockerArgs":        req.Args,
		"containerDiskInGb": max(req.ContainerDisk, 1),
		"volumeInGb":        0,
		"supportPublicIp":   true,
	}
	if input["cloudType"] == "" {
		input["cloudType"] = "SECURE"
	}
	if req.DataCenterID != "" {
		input["dataCenterId"] = req.DataCenterID
	}
	var lastErr error
	for attempt := 1; attempt <= createAttempts; attempt++ {
		var data struct {
			Pod *struct {
				ID        string  `json:"id"`
				CostPerHr float64 `json:"costPerHr"`
			} `json:"podRentInterruptable"`
		}
		err := c.graphql(ctx, "create spot pod", rentInterruptableMutation, map[string]any{"input": input}, false, &data)
		if err == nil {
			if data.Pod == nil || data.Pod.ID == "" {
				return "", 0, cloudapi.Errorf("runpod", cloudapi.ReasonUnknown, "create spot pod", "the answer names no pod")
			}
			cost := data.Pod.CostPerHr
			if cost <= 0 {
				cost = req.BidPerGPU * float64(count)
			}
			return data.Pod.ID, cost, nil
		}
		var ce *cloudapi.Error
		if !errors.As(err, &ce) || !ce.Ambiguous {
			return "", 0, err
		}
		lastErr = err
		found, ferr := c.FindPodByName(ctx, req.Name)
		if ferr != nil {
			return "", 0, fmt.Errorf("%w; then looking the pod up by name failed: %w", err, ferr)
		}
		if found != nil {
			return found.ID, req.BidPerGPU * float64(count), nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return "", 0, lastErr
}
