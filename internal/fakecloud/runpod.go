package fakecloud

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// noCapacityDetail is what RunPod says when it has no machine for a create.
const noCapacityDetail = "There are no longer any instances available with the requested specifications. Please refresh and try again."

// RunPod's defaults for what a create may leave out.
const (
	defaultDisk       = 50
	defaultDataCenter = "US-KS-2"
	cudaVersion       = "12.8"
)

// gpuType is one GPU type of RunPod's catalogue; prices are USD per hour per GPU.
type gpuType struct {
	ID, Name, Pool    string
	Memory            int
	Secure, Community float64
	MaxCount          int
}

var runpodGPUs = []gpuType{
	{ID: "NVIDIA GeForce RTX 4090", Name: "RTX 4090", Pool: "ADA_24", Memory: 24, Secure: 0.69, Community: 0.34, MaxCount: 8},
	{ID: "NVIDIA A100 80GB PCIe", Name: "A100 PCIe", Pool: "AMPERE_80", Memory: 80, Secure: 1.64, Community: 1.19, MaxCount: 8},
	{ID: "NVIDIA A100-SXM4-80GB", Name: "A100 SXM", Pool: "AMPERE_80", Memory: 80, Secure: 1.74, Community: 1.39, MaxCount: 8},
	{ID: "NVIDIA H100 80GB HBM3", Name: "H100 SXM", Pool: "ADA_80_PRO", Memory: 80, Secure: 2.99, Community: 2.69, MaxCount: 8},
}

var runpodDataCenters = []struct{ ID, Name string }{
	{"US-KS-2", "US Kansas 2"}, {"US-TX-3", "US Texas 3"}, {"EU-RO-1", "EU Romania 1"},
}

func findGPU(id string) (gpuType, bool) {
	for _, g := range runpodGPUs {
		if g.ID == id {
			return g, true
		}
	}
	return gpuType{}, false
}

// minimumBid is the lowest spot bid per GPU RunPod takes: about 60% of the community price.
func (g gpuType) minimumBid() float64 { return math.Round(g.Community*0.6*1000) / 1000 }

// pod is what RunPod knows of a pod beyond the machine: its container settings and price.
type pod struct {
	image, args      string
	disk             int
	ports            []string
	env              map[string]string
	registry         *string
	mounts           json.RawMessage
	gpuID            string
	gpuCount         int
	cloud            string
	dataCenterID     string
	price            float64 // USD per hour while billed
	globalNetworking bool
	proxyUser        string
	machineID        string
}

func (p *pod) exposesSSH() bool {
	for _, port := range p.ports {
		if strings.TrimSpace(port) == "22/tcp" {
			return true
		}
	}
	return false
}

func (s *Server) routeRunPod(mux *http.ServeMux) {
	mux.HandleFunc("POST /v2/pods", s.api(s.createPod))
	mux.HandleFunc("GET /v2/pods", s.api(s.listPods))
	mux.HandleFunc("GET /v2/pods/{id}", s.api(s.getPod))
	mux.HandleFunc("DELETE /v2/pods/{id}", s.api(s.deletePod))
	mux.HandleFunc("POST /v2/pods/{id}/action", s.api(s.podAction))
	mux.HandleFunc("GET /v2/catalog/gpus", s.api(s.listGPUs))
	mux.HandleFunc("GET /v2/catalog/gpus/{id}", s.api(s.getGPU))
	mux.HandleFunc("POST /graphql", s.api(s.graphQL))
	mux.HandleFunc("/", s.api(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusNotFound, "resource not found", nil)
	}))
}

func newPodID() string { return randomString(14, "abcdefghijklmnopqrstuvwxyz0123456789") }

func randomString(n int, alphabet string) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func randomHex(nBytes int) string {
	b := make([]byte, nBytes)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// podSetup is what a create carried that the pod's image acts on at boot.
type podSetup struct {
	name          string
	interruptible bool
	pod           pod
}

// createMachineFromPod makes and starts the machine of a RunPod create, set up from its env
// as the official image's start script would: PUBLIC_KEY lines become authorized keys, and
// UNDERSTUDY_HOST_KEY (base64 of an OpenSSH PEM key) the host key.
func (s *Server) createMachineFromPod(ps podSetup) (*machine, error) {
	id := newPodID()
	m, err := s.newMachine(id, ps.name)
	if err != nil {
		return nil, err
	}
	p := ps.pod
	p.proxyUser = id + "-" + randomHex(4)
	p.machineID = randomString(12, "abcdefghijklmnopqrstuvwxyz0123456789")
	m.pod, m.interruptible = &p, ps.interruptible
	m.authorized = keyLines(p.env["PUBLIC_KEY"])
	if enc, ok := p.env["UNDERSTUDY_HOST_KEY"]; ok {
		m.hostKey = s.decodeInjectedHostKey(id, enc)
	}
	m.lease = s.leaseFrom(id, func(k string) string { return p.env[k] })
	if err := s.start(m); err != nil {
		return nil, err
	}
	return m, nil
}

func (s *Server) decodeInjectedHostKey(id, enc string) string {
	pemText, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err == nil {
		var key string
		if key, err = checkHostKey(string(pemText)); err == nil {
			return key
		}
	}
	s.log.Warn("ignore injected host key; the machine generates one", "machine", id, "err", err)
	return ""
}

// leaseFrom reads the lease settings named UNDERSTUDY_LEASE_FILE, _SECONDS and DEADLINE.
func (s *Server) leaseFrom(id string, get func(string) string) lease {
	l := lease{File: strings.TrimSpace(get("UNDERSTUDY_LEASE_FILE"))}
	for name, dst := range map[string]*int64{"UNDERSTUDY_LEASE_SECONDS": &l.Seconds, "UNDERSTUDY_DEADLINE": &l.Deadline} {
		v := strings.TrimSpace(get(name))
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			s.log.Warn("ignore lease setting", "machine", id, "setting", name, "err", err)
			continue
		}
		*dst = n
	}
	return l
}

func (s *Server) createPod(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "could not read request body", nil)
		return
	}
	req, apiErr := parseCreatePod(body)
	if apiErr != nil {
		writeProblem(w, apiErr.status, apiErr.detail, apiErr.errs)
		return
	}
	if s.cfg.Faults.NoCapacity {
		writeProblem(w, http.StatusBadRequest, noCapacityDetail, nil)
		return
	}
	m, err := s.createMachineFromPod(req.setup())
	if err != nil {
		s.log.Error("create pod", "err", err)
		writeProblem(w, http.StatusInternalServerError, "An unexpected error occurred.", nil)
		return
	}
	if s.cfg.Faults.CreateFailsButCreates {
		writeProblem(w, http.StatusInternalServerError, "An unexpected error occurred.", nil)
		return
	}
	s.mu.Lock()
	view := s.podView(m, time.Now())
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, view)
}

// visiblePod returns the pod with id unless it never existed or was deleted.
// The caller holds s.mu.
func (s *Server) visiblePod(id string) (*machine, bool) {
	m, ok := s.byID[id]
	if !ok || m.pod == nil || !m.goneAt.IsZero() {
		return nil, false
	}
	return m, true
}

func (s *Server) listPods(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	s.mu.Lock()
	pods := []podJSON{}
	for _, m := range s.order {
		if _, ok := s.visiblePod(m.id); ok {
			pods = append(pods, s.podView(m, now))
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"pods": pods})
}

func (s *Server) getPod(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	m, ok := s.visiblePod(r.PathValue("id"))
	var view podJSON
	if ok {
		view = s.podView(m, time.Now())
	}
	s.mu.Unlock()
	if !ok {
		writeProblem(w, http.StatusNotFound, "pod not found", nil)
		return
	}
	writeJSON(w, http.StatusOK, view)
}

func (s *Server) deletePod(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	m, ok := s.visiblePod(r.PathValue("id"))
	if ok {
		s.deletePodLocked(m, time.Now())
	}
	s.mu.Unlock()
	if !ok {
		writeProblem(w, http.StatusNotFound, "pod not found", nil)
		return
	}
	s.finishDelete(m)
	w.WriteHeader(http.StatusNoContent)
}

// deletePodLocked terminates m. The caller holds s.mu and then calls finishDelete.
func (s *Server) deletePodLocked(m *machine, now time.Time) {
	s.terminate(m, now)
	s.log.Info("delete pod", "machine", m.id)
}

// finishDelete stops a deleted pod before the answer goes out, so that a pod the API calls
// gone is stopped; under the slow-delete fault the pod lingers instead.
func (s *Server) finishDelete(m *machine) {
	if !s.cfg.Faults.SlowDelete {
		s.remove(m)
	}
}

func (s *Server) podAction(w http.ResponseWriter, r *http.Request) {
	action, apiErr := parsePodAction(r.Body)
	if apiErr != nil {
		writeProblem(w, apiErr.status, apiErr.detail, apiErr.errs)
		return
	}
	now := time.Now()
	s.mu.Lock()
	m, ok := s.visiblePod(r.PathValue("id"))
	if !ok {
		s.mu.Unlock()
		writeProblem(w, http.StatusNotFound, "pod not found", nil)
		return
	}
	status := s.podStatus(m, now)
	if !slices.Contains(podActions(status), action) {
		s.mu.Unlock()
		writeProblem(w, http.StatusConflict, fmt.Sprintf("action %q is not valid for a pod in status %s", action, status), nil)
		return
	}
	switch action {
	case "terminate":
		s.deletePodLocked(m, now)
		s.mu.Unlock()
		s.finishDelete(m)
		w.WriteHeader(http.StatusNoContent)
		return
	case "stop":
		m.gen++
		m.phase, m.stoppedReason = phaseStopped, "stopped"
	case "start", "restart":
		m.gen++
		m.phase, m.stoppedReason, m.bootStart, m.runningAt = phaseBooting, "", now, time.Time{}
	}
	m.poke()
	s.log.Info("act on pod", "machine", m.id, "action", action)
	view := s.podView(m, now)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, view)
}

// podActions lists the actions RunPod allows in status.
func podActions(status string) []string {
	switch status {
	case "RUNNING":
		return []string{"stop", "restart", "terminate"}
	case "EXITED", "ERROR":
		return []string{"start", "terminate"}
	case "PROVISIONING", "STARTING":
		return []string{"stop", "terminate"}
	}
	return []string{}
}

// podStatus is m's RunPod status. The caller holds s.mu.
func (s *Server) podStatus(m *machine, now time.Time) string {
	switch m.phase {
	case phaseBooting:
		if now.Before(m.bootStart.Add(s.cfg.BootDelay / 2)) {
			return "PROVISIONING"
		}
		return "STARTING"
	case phaseRunning:
		return "RUNNING"
	case phaseStopped:
		return "EXITED"
	case phaseFailed:
		return "ERROR"
	}
	return "TERMINATED"
}

// podJSON is RunPod's Pod; every field the schema requires is present.
type podJSON struct {
	ID               string            `json:"id"`
	Name             string            `json:"name"`
	Image            string            `json:"image"`
	Args             string            `json:"args"`
	Disk             int               `json:"disk"`
	Ports            []string          `json:"ports"`
	Env              map[string]string `json:"env"`
	Registry         *string           `json:"registry"`
	Status           string            `json:"status"`
	Actions          []string          `json:"actions"`
	Mounts           json.RawMessage   `json:"mounts"`
	GPU              podGPU            `json:"gpu"`
	Cloud            string            `json:"cloud"`
	DataCenterID     *string           `json:"dataCenterId"`
	CudaVersion      *string           `json:"cudaVersion"`
	SSH              podSSH            `json:"ssh"`
	Template         *string           `json:"template"`
	Cost             float64           `json:"cost"`
	Locked           bool              `json:"locked"`
	GlobalNetworking podGlobalNet      `json:"globalNetworking"`
	Runtime          *podRuntime       `json:"runtime"`
	CreatedAt        string            `json:"createdAt"`
	StartedAt        *string           `json:"startedAt"`
}

type podGPU struct {
	ID    string `json:"id"`
	Count int    `json:"count"`
}

type podSSH struct {
	Proxy  *sshEndpoint `json:"proxy"`
	Direct *sshEndpoint `json:"direct"`
}

type sshEndpoint struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Username string `json:"username"`
	Command  string `json:"command"`
}

type podGlobalNet struct {
	Enabled     bool   `json:"enabled"`
	IP          string `json:"ip,omitempty"`
	InternalDNS string `json:"internalDns,omitempty"`
}

type podRuntime struct {
	Uptime int64            `json:"uptime"`
	GPUs   []struct{}       `json:"gpus"`
	CPU    podUtil          `json:"cpu"`
	Memory podUtil          `json:"memory"`
	Ports  []podRuntimePort `json:"ports"`
}

type podUtil struct {
	Util int `json:"util"`
}

type podRuntimePort struct {
	Private int    `json:"private"`
	Public  int    `json:"public"`
	Type    string `json:"type"`
	IP      string `json:"ip"`
}

// podView renders m as RunPod's Pod. The caller holds s.mu.
func (s *Server) podView(m *machine, now time.Time) podJSON {
	p := m.pod
	status := s.podStatus(m, now)
	dc, cuda := p.dataCenterID, cudaVersion
	v := podJSON{
		ID: m.id, Name: m.name, Image: p.image, Args: p.args, Disk: p.disk,
		Ports: p.ports, Env: p.env, Registry: p.registry, Status: status,
		Actions: podActions(status), Mounts: p.mounts,
		GPU:   podGPU{ID: p.gpuID, Count: p.gpuCount},
		Cloud: p.cloud, DataCenterID: &dc, CudaVersion: &cuda,
		SSH: podSSH{Proxy: &sshEndpoint{
			Host: "ssh.runpod.io", Port: 22, Username: p.proxyUser,
			Command: "ssh " + p.proxyUser + "@ssh.runpod.io",
		}},
		CreatedAt:        m.createdAt.UTC().Format(time.RFC3339),
		GlobalNetworking: podGlobalNet{Enabled: p.globalNetworking},
	}
	if p.globalNetworking {
		v.GlobalNetworking.IP = "10.65.0.2"
		v.GlobalNetworking.InternalDNS = m.id + ".runpod.internal"
	}
	switch status {
	case "PROVISIONING", "STARTING", "RUNNING":
		v.Cost = p.price
	}
	if status == "RUNNING" {
		started := m.runningAt.UTC().Format(time.RFC3339)
		v.StartedAt = &started
		v.Runtime = s.podRuntime(m, now)
		if p.exposesSSH() && m.sshdUp {
			v.SSH.Direct = &sshEndpoint{
				Host: "127.0.0.1", Port: m.port, Username: s.loginUser,
				Command: fmt.Sprintf("ssh %s@127.0.0.1 -p %d", s.loginUser, m.port),
			}
		}
	}
	return v
}

func (s *Server) podRuntime(m *machine, now time.Time) *podRuntime {
	rt := &podRuntime{Uptime: int64(now.Sub(m.runningAt) / time.Second), GPUs: []struct{}{}, Ports: []podRuntimePort{}}
	if m.pod.exposesSSH() && m.sshdUp {
		rt.Ports = append(rt.Ports, podRuntimePort{Private: 22, Public: m.port, Type: "tcp", IP: "127.0.0.1"})
	}
	return rt
}

// gpuTypeJSON is RunPod's GpuType.
type gpuTypeJSON struct {
	ID           string          `json:"id"`
	Name         string          `json:"name"`
	Pool         string          `json:"pool"`
	Manufacturer string          `json:"manufacturer"`
	Memory       int             `json:"memory"`
	Secure       bool            `json:"secure"`
	Community    bool            `json:"community"`
	Price        gpuPrice        `json:"price"`
	MaxCount     gpuMaxCount     `json:"maxCount"`
	Availability string          `json:"availability,omitempty"`
	DataCenters  []dcAvailable   `json:"dataCenters,omitempty"`
	CudaVersions []cudaAvailable `json:"cudaVersions,omitempty"`
}

type gpuPrice struct {
	Secure    float64 `json:"secure"`
	Community float64 `json:"community"`
}

type gpuMaxCount struct {
	Secure    int `json:"secure"`
	Community int `json:"community"`
}

type dcAvailable struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	Availability string `json:"availability"`
}

type cudaAvailable struct {
	Version   string `json:"version"`
	Available bool   `json:"available"`
}

// catalogAvailability parses include/product: availability is shown only with both.
func catalogAvailability(r *http.Request) (bool, string) {
	q := r.URL.Query()
	include, product := q.Get("include"), q.Get("product")
	switch {
	case include == "" && product == "":
		return false, ""
	case include != "AVAILABILITY":
		if include == "" {
			return false, "product is valid only with include=AVAILABILITY"
		}
		return false, fmt.Sprintf("unsupported include value %q", include)
	case product == "":
		return false, "include=AVAILABILITY requires product"
	}
	for _, p := range strings.Split(product, ",") {
		if p != "POD" && p != "CLUSTER" && p != "SERVERLESS" {
			return false, fmt.Sprintf("unsupported product value %q", p)
		}
	}
	return true, ""
}

func (s *Server) gpuView(g gpuType, withAvailability bool) gpuTypeJSON {
	v := gpuTypeJSON{
		ID: g.ID, Name: g.Name, Pool: g.Pool, Manufacturer: "NVIDIA", Memory: g.Memory,
		Secure: true, Community: true,
		Price:    gpuPrice{Secure: g.Secure, Community: g.Community},
		MaxCount: gpuMaxCount{Secure: g.MaxCount, Community: g.MaxCount},
	}
	if !withAvailability {
		return v
	}
	if s.cfg.Faults.NoCapacity {
		v.Availability = "NONE"
		v.CudaVersions = []cudaAvailable{{Version: cudaVersion, Available: false}}
		return v
	}
	v.Availability = "HIGH"
	for _, dc := range runpodDataCenters {
		v.DataCenters = append(v.DataCenters, dcAvailable{ID: dc.ID, Name: dc.Name, Availability: "HIGH"})
	}
	v.CudaVersions = []cudaAvailable{{Version: cudaVersion, Available: true}}
	return v
}

func (s *Server) listGPUs(w http.ResponseWriter, r *http.Request) {
	avail, bad := catalogAvailability(r)
	if bad != "" {
		writeProblem(w, http.StatusBadRequest, bad, nil)
		return
	}
	gpus := []gpuTypeJSON{}
	for _, g := range runpodGPUs {
		gpus = append(gpus, s.gpuView(g, avail))
	}
	writeJSON(w, http.StatusOK, map[string]any{"gpus": gpus})
}

func (s *Server) getGPU(w http.ResponseWriter, r *http.Request) {
	avail, bad := catalogAvailability(r)
	if bad != "" {
		writeProblem(w, http.StatusBadRequest, bad, nil)
		return
	}
	g, ok := findGPU(r.PathValue("id"))
	if !ok {
		writeProblem(w, http.StatusNotFound, fmt.Sprintf("GPU type %q not found", r.PathValue("id")), nil)
		return
	}
	writeJSON(w, http.StatusOK, s.gpuView(g, avail))
}
