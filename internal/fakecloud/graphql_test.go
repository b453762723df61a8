package fakecloud

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/understudy-ai/training-service/provider/sshd"
)

const (
	gpuTypesQuery = `query GpuTypes($id: String, $gpuCount: Int) { gpuTypes(input: {id: $id}) { id displayName memoryInGb securePrice communityPrice lowestPrice(input: {gpuCount: $gpuCount}) { minimumBidPrice uninterruptablePrice stockStatus } } }`
	rentMutation  = `mutation Rent($input: PodRentInterruptableInput!) { podRentInterruptable(input: $input) { id name costPerHr machineId desiredStatus } }`
	podQuery      = `query Pod($input: PodFilter!) { pod(input: $input) { id name desiredStatus costPerHr runtime { ports { ip isIpPublic privatePort publicPort type } } } }`
	terminateMut  = `mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }`
)

func gpuTypesRequest() map[string]any {
	return map[string]any{"query": gpuTypesQuery, "variables": map[string]any{"id": rtx4090, "gpuCount": 1}}
}

// rentRequest is a spot create of one RTX 4090 bidding 0.25; input overrides fields.
func rentRequest(input map[string]any) map[string]any {
	in := map[string]any{
		"bidPerGpu": 0.25, "cloudType": "SECURE", "gpuCount": 1, "gpuTypeId": rtx4090,
		"name": "spot", "imageName": "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2204",
		"dockerArgs": "sleep infinity", "ports": "22/tcp", "containerDiskInGb": 20,
		"startSsh": true, "supportPublicIp": true,
	}
	for k, v := range input {
		in[k] = v
	}
	return map[string]any{"query": rentMutation, "variables": map[string]any{"input": in}}
}

func (f *fake) graphQL(body map[string]any) map[string]any {
	f.t.Helper()
	r := f.call(http.MethodPost, "/graphql", body)
	if r.status != http.StatusOK {
		f.t.Fatalf("POST /graphql: %d %s", r.status, r.body)
	}
	return r.json(f.t)
}

func gqlError(v map[string]any) string {
	errs, _ := v["errors"].([]any)
	if len(errs) == 0 {
		return ""
	}
	msg, _ := dig(errs[0], "message").(string)
	return msg
}

func TestGraphQLSpotPodIsPreempted(t *testing.T) {
	t.Parallel()
	f := startFake(t, Config{Provider: RunPod, Faults: Faults{PreemptAfter: 1500 * time.Millisecond}})
	job, host := newKeyPair(t), newKeyPair(t)

	types := f.graphQL(gpuTypesRequest())
	gpus := dig(types, "data", "gpuTypes").([]any)
	if len(gpus) != 1 || dig(gpus[0], "lowestPrice", "minimumBidPrice") != 0.204 || dig(gpus[0], "lowestPrice", "stockStatus") != "High" {
		t.Fatalf("gpuTypes = %v", types)
	}
	for name, tt := range map[string]struct {
		edit func(in map[string]any)
		want string
	}{
		"low bid":       {func(in map[string]any) { in["bidPerGpu"] = 0.1 }, "Your bid price is too low"},
		"unknown field": {func(in map[string]any) { in["interruptible"] = true }, `Field "interruptible" is not defined`},
		"no bid":        {func(in map[string]any) { delete(in, "bidPerGpu") }, "bidPerGpu"},
		"bad cloud":     {func(in map[string]any) { in["cloudType"] = "SPOT" }, "SPOT"},
	} {
		req := rentRequest(nil)
		tt.edit(req["variables"].(map[string]any)["input"].(map[string]any))
		out := f.graphQL(req)
		if got := gqlError(out); !strings.Contains(got, tt.want) || out["data"] != nil {
			t.Errorf("%s: %v, want error %q", name, out, tt.want)
		}
	}

	env := []map[string]string{
		{"key": "PUBLIC_KEY", "value": job.authorized},
		{"key": "UNDERSTUDY_HOST_KEY", "value": podBody("", job, host, nil)["env"].(map[string]string)["UNDERSTUDY_HOST_KEY"]},
	}
	rent := f.graphQL(rentRequest(map[string]any{"gpuCount": 2, "env": env}))
	spot, _ := dig(rent, "data", "podRentInterruptable").(map[string]any)
	if spot == nil || spot["costPerHr"] != 0.5 || spot["desiredStatus"] != "RUNNING" {
		t.Fatalf("podRentInterruptable = %v", rent)
	}
	id := spot["id"].(string)
	onDemand := f.createPod(podBody("on-demand", job, host, nil))["id"].(string)

	pod := f.waitPodStatus(id, "RUNNING", 15*time.Second)
	if pod["cost"] != 0.5 || dig(pod, "gpu", "count") != 2.0 {
		t.Errorf("spot pod over REST: cost %v gpu %v", pod["cost"], pod["gpu"])
	}
	if out, err := sshRun(t, directAddr(t, pod), host.signer.PublicKey(), job.signer, "echo ok"); err != nil || strings.TrimSpace(out) != "ok" {
		t.Fatalf("ssh to spot pod: %q %v", out, err)
	}
	gqlPod := f.graphQL(map[string]any{"query": podQuery, "variables": map[string]any{"input": map[string]any{"podId": id}}})
	ports, _ := dig(gqlPod, "data", "pod", "runtime", "ports").([]any)
	if len(ports) != 1 || dig(ports[0], "privatePort") != 22.0 || dig(ports[0], "isIpPublic") != true {
		t.Errorf("pod query = %v", gqlPod)
	}
	m := f.fakeMachine(id)
	if !m.Interruptible {
		t.Errorf("spot machine not interruptible: %+v", m)
	}

	pod = f.waitPodStatus(id, "EXITED", 15*time.Second)
	if pod["cost"] != 0.0 || pod["runtime"] != nil || dig(pod, "ssh", "direct") != nil {
		t.Errorf("preempted pod: %v", pod)
	}
	if r := f.fakeMachine(id).StoppedReason; r != "preempted" {
		t.Errorf("stopped reason %q", r)
	}
	eventually(t, 15*time.Second, "the preempted pod's sshd to end", func() bool {
		return sshd.ProcessGone(m.SSHDPID) && !tagged(m.Dir)
	})
	if _, p := f.getPod(onDemand); p["status"] != "RUNNING" {
		t.Errorf("on-demand pod preempted: %v", p["status"])
	}
	gqlPod = f.graphQL(map[string]any{"query": podQuery, "variables": map[string]any{"input": map[string]any{"podId": id}}})
	if dig(gqlPod, "data", "pod", "runtime") != nil || dig(gqlPod, "data", "pod", "desiredStatus") != "EXITED" {
		t.Errorf("pod query after preemption = %v", gqlPod)
	}

	term := f.graphQL(map[string]any{"query": terminateMut, "variables": map[string]any{"input": map[string]any{"podId": id}}})
	if data, ok := term["data"].(map[string]any); !ok || data["podTerminate"] != nil || gqlError(term) != "" {
		t.Errorf("podTerminate = %v", term)
	}
	if code, _ := f.getPod(id); code != http.StatusNotFound {
		t.Errorf("GET terminated spot pod: %d", code)
	}
	gone := f.graphQL(map[string]any{"query": podQuery, "variables": map[string]any{"input": map[string]any{"podId": id}}})
	if data, ok := gone["data"].(map[string]any); !ok || data["pod"] != nil {
		t.Errorf("pod query after terminate = %v", gone)
	}
}
