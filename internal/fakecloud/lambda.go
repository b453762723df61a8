package fakecloud

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// terminatedVisibleFor is how long GET /instances/{id} still shows a terminated instance.
const terminatedVisibleFor = 30 * time.Second

// instanceType is one instance type of Lambda's catalogue.
type instanceType struct {
	Name, Description, GPUDescription        string
	PriceCents, VCPUs, MemoryGiB, StorageGiB int
	GPUs                                     int
}

var lambdaTypes = []instanceType{
	{"gpu_1x_a10", "1x A10 (24 GB)", "A10 (24 GB)", 75, 30, 200, 1400, 1},
	{"gpu_1x_a100_sxm4", "1x A100 (40 GB SXM4)", "A100 (40 GB SXM4)", 129, 30, 200, 512, 1},
	{"gpu_1x_h100_pcie", "1x H100 (80 GB PCIe)", "H100 (80 GB PCIe)", 249, 26, 200, 1000, 1},
}

type region struct {
	Name        string `json:"name"`
	Description string `json:"description"`
}

var lambdaRegions = []region{{"us-east-1", "Virginia, USA"}, {"us-west-1", "California, USA"}}

func findInstanceType(name string) (instanceType, bool) {
	for _, t := range lambdaTypes {
		if t.Name == name {
			return t, true
		}
	}
	return instanceType{}, false
}

func findRegion(name string) (region, bool) {
	for _, r := range lambdaRegions {
		if r.Name == name {
			return r, true
		}
	}
	return region{}, false
}

// instance is what Lambda knows of an instance beyond the machine.
type instance struct {
	typ             instanceType
	region          region
	sshKeyNames     []string
	fileSystemNames []string
	jupyterToken    string
}

// sshKey is a registered SSH key.
type sshKey struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	PublicKey string `json:"public_key"`
}

func (s *Server) routeLambda(mux *http.ServeMux) {
	const v1 = "/api/v1"
	mux.HandleFunc("GET "+v1+"/instance-types", s.api(s.listInstanceTypes))
	mux.HandleFunc("GET "+v1+"/instances", s.api(s.listInstances))
	mux.HandleFunc("GET "+v1+"/instances/{id}", s.api(s.getInstance))
	mux.HandleFunc("POST "+v1+"/instance-operations/launch", s.api(s.launch))
	mux.HandleFunc("POST "+v1+"/instance-operations/terminate", s.api(s.terminateInstances))
	mux.HandleFunc("GET "+v1+"/ssh-keys", s.api(s.listSSHKeys))
	mux.HandleFunc("POST "+v1+"/ssh-keys", s.api(s.addSSHKey))
	mux.HandleFunc("DELETE "+v1+"/ssh-keys/{id}", s.api(s.deleteSSHKey))
	mux.HandleFunc("/", s.api(func(w http.ResponseWriter, r *http.Request) {
		writeLambdaError(w, http.StatusNotFound, lambdaErr{Code: "global/object-does-not-exist", Message: "Not found."}, nil)
	}))
}

// invalidParameters is Lambda's answer to bad parameters, with the bad fields.
func invalidParameters(message string, fields map[string]lambdaErr) *launchFailure {
	return &launchFailure{status: http.StatusBadRequest, err: lambdaErr{Code: "global/invalid-parameters", Message: message}, fields: fields}
}

// writeInvalid answers that field is bad.
func writeInvalid(w http.ResponseWriter, field, message string) {
	invalidParameters("Invalid request parameters.", map[string]lambdaErr{field: fieldError(message)}).write(w)
}

func fieldError(message string) lambdaErr {
	return lambdaErr{Code: "global/invalid-parameters", Message: message}
}

type instanceTypeJSON struct {
	Name              string    `json:"name"`
	Description       string    `json:"description"`
	GPUDescription    string    `json:"gpu_description"`
	PriceCentsPerHour int       `json:"price_cents_per_hour"`
	Specs             typeSpecs `json:"specs"`
}

type typeSpecs struct {
	VCPUs      int `json:"vcpus"`
	MemoryGiB  int `json:"memory_gib"`
	StorageGiB int `json:"storage_gib"`
	GPUs       int `json:"gpus"`
}

func (t instanceType) view() instanceTypeJSON {
	return instanceTypeJSON{
		Name: t.Name, Description: t.Description, GPUDescription: t.GPUDescription,
		PriceCentsPerHour: t.PriceCents,
		Specs:             typeSpecs{VCPUs: t.VCPUs, MemoryGiB: t.MemoryGiB, StorageGiB: t.StorageGiB, GPUs: t.GPUs},
	}
}

func (s *Server) regionsWithCapacity() []region {
	if s.cfg.Faults.NoCapacity {
		return []region{}
	}
	return slices.Clone(lambdaRegions)
}

func (s *Server) listInstanceTypes(w http.ResponseWriter, r *http.Request) {
	type entry struct {
		InstanceType instanceTypeJSON `json:"instance_type"`
		Regions      []region         `json:"regions_with_capacity_available"`
	}
	data := map[string]entry{}
	for _, t := range lambdaTypes {
		data[t.Name] = entry{InstanceType: t.view(), Regions: s.regionsWithCapacity()}
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": data})
}

type instanceJSON struct {
	ID              string           `json:"id"`
	Name            *string          `json:"name"`
	IP              *string          `json:"ip"`
	Hostname        *string          `json:"hostname"`
	Status          string           `json:"status"`
	SSHKeyNames     []string         `json:"ssh_key_names"`
	FileSystemNames []string         `json:"file_system_names"`
	Region          region           `json:"region"`
	InstanceType    instanceTypeJSON `json:"instance_type"`
	JupyterToken    *string          `json:"jupyter_token"`
	JupyterURL      *string          `json:"jupyter_url"`
}

// lambdaStatus is m's Lambda status. The caller holds s.mu.
func lambdaStatus(m *machine) string {
	switch {
	case m.phase == phaseTerminated:
		return "terminated"
	case !m.deleteAt.IsZero():
		return "terminating"
	case m.phase == phaseBooting:
		return "booting"
	case m.phase == phaseRunning:
		return "active"
	}
	return "unhealthy" // powered off or broken: still billed until terminated
}

// instanceView renders m as Lambda's Instance. The caller holds s.mu.
func (s *Server) instanceView(m *machine) instanceJSON {
	in := m.inst
	v := instanceJSON{
		ID: m.id, Status: lambdaStatus(m), SSHKeyNames: in.sshKeyNames, FileSystemNames: in.fileSystemNames,
		Region: in.region, InstanceType: in.typ.view(),
	}
	if m.name != "" {
		name := m.name
		v.Name = &name
	}
	if !m.runningAt.IsZero() { // the address is known once the instance has booted
		ip := m.listen
		host := strings.ReplaceAll(ip, ".", "-") + ".cloud.lambdalabs.com"
		token := in.jupyterToken
		url := "https://jupyter-" + m.id + ".lambdaspaces.com/?token=" + token
		v.IP, v.Hostname, v.JupyterToken, v.JupyterURL = &ip, &host, &token, &url
	}
	return v
}

// lambdaInstance returns the instance with id while Lambda still shows it: until
// s.keepTerminated after its termination. The caller holds s.mu.
func (s *Server) lambdaInstance(id string, now time.Time) (*machine, bool) {
	m, ok := s.byID[id]
	if !ok || m.inst == nil || (!m.goneAt.IsZero() && now.Sub(m.goneAt) >= s.keepTerminated) {
		return nil, false
	}
	return m, true
}

func (s *Server) listInstances(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	out := []instanceJSON{}
	for _, m := range s.order {
		if m.inst != nil && m.phase != phaseTerminated {
			out = append(out, s.instanceView(m))
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

func instanceNotFound(w http.ResponseWriter) {
	writeLambdaError(w, http.StatusNotFound, lambdaErr{Code: "global/object-does-not-exist", Message: "Specified instance does not exist."}, nil)
}

func (s *Server) getInstance(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	m, ok := s.lambdaInstance(r.PathValue("id"), time.Now())
	var view instanceJSON
	if ok {
		view = s.instanceView(m)
	}
	s.mu.Unlock()
	if !ok {
		instanceNotFound(w)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": view})
}

// launchRequest is the launch body, once its fields have the right types.
type launchRequest struct {
	RegionName       string   `json:"region_name"`
	InstanceTypeName string   `json:"instance_type_name"`
	SSHKeyNames      []string `json:"ssh_key_names"`
	FileSystemNames  []string `json:"file_system_names"`
	Quantity         *int     `json:"quantity"`
	Name             *string  `json:"name"`
	UserData         *string  `json:"user_data"`
}

// launchFailure is a Lambda error answer.
type launchFailure struct {
	status int
	err    lambdaErr
	fields map[string]lambdaErr
}

func newFailure(status int, e lambdaErr) *launchFailure {
	return &launchFailure{status: status, err: e}
}

func (f *launchFailure) write(w http.ResponseWriter) { writeLambdaError(w, f.status, f.err, f.fields) }

// parseLaunch checks the body's fields one by one, as Lambda reports them in field_errors.
func parseLaunch(body []byte) (launchRequest, *launchFailure) {
	var req launchRequest
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		return req, invalidParameters("Request body must be a JSON object.", nil)
	}
	errs := map[string]lambdaErr{}
	decode := func(name string, dst any, required bool, what string) {
		raw, ok := fields[name]
		if !ok || string(raw) == "null" {
			if required {
				errs[name] = fieldError("Field is required.")
			}
			return
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			errs[name] = fieldError("Must be " + what + ".")
		}
	}
	decode("region_name", &req.RegionName, true, "a string")
	decode("instance_type_name", &req.InstanceTypeName, true, "a string")
	decode("ssh_key_names", &req.SSHKeyNames, true, "a list of strings")
	decode("file_system_names", &req.FileSystemNames, false, "a list of strings")
	decode("quantity", &req.Quantity, false, "an integer")
	decode("name", &req.Name, false, "a string")
	decode("user_data", &req.UserData, false, "a string")
	req.checkRanges(errs)
	if len(errs) > 0 {
		return req, invalidParameters("Invalid request parameters.", errs)
	}
	return req, nil
}

func (req *launchRequest) checkRanges(errs map[string]lambdaErr) {
	if _, bad := errs["ssh_key_names"]; !bad && req.SSHKeyNames != nil && len(req.SSHKeyNames) != 1 {
		errs["ssh_key_names"] = fieldError("Exactly one SSH key must be specified.")
	}
	if len(req.FileSystemNames) > 1 {
		errs["file_system_names"] = fieldError("At most one file system may be specified.")
	}
	if req.Quantity != nil && *req.Quantity != 1 {
		errs["quantity"] = fieldError("Must be 1.")
	}
	if req.Name != nil && (len(*req.Name) < 1 || len(*req.Name) > 64) {
		errs["name"] = fieldError("Must be between 1 and 64 characters.")
	}
}

func (s *Server) launch(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	release, wait := s.reserveLaunch(now)
	if wait > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		writeLambdaError(w, http.StatusTooManyRequests, lambdaErr{Code: "global/unknown", Message: "Too many requests"}, nil)
		return
	}
	m, failure := s.launchMachine(r)
	if failure != nil {
		release()
		failure.write(w)
		return
	}
	if s.cfg.Faults.CreateFailsButCreates {
		writeLambdaError(w, http.StatusInternalServerError, lambdaErr{Code: "global/unknown", Message: "Something unexpected occurred."}, nil)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{"instance_ids": []string{m.id}}})
}

// reserveLaunch claims the launch slot at now, or says how long until the next one is
// free. release gives the slot back when the launch is refused.
func (s *Server) reserveLaunch(now time.Time) (release func(), wait time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.lastLaunch.IsZero() {
		if wait = s.lastLaunch.Add(s.cfg.LaunchInterval).Sub(now); wait > 0 {
			return nil, wait
		}
	}
	prev := s.lastLaunch
	s.lastLaunch = now
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.lastLaunch.Equal(now) {
			s.lastLaunch = prev
		}
	}, 0
}

func (s *Server) launchMachine(r *http.Request) (*machine, *launchFailure) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, invalidParameters("Could not read the request body.", nil)
	}
	req, failure := parseLaunch(body)
	if failure != nil {
		return nil, failure
	}
	if s.cfg.Faults.NoUserData && req.UserData != nil {
		return nil, invalidParameters("Invalid request parameters.", map[string]lambdaErr{"user_data": fieldError("user_data is not supported")})
	}
	typ, reg, key, failure := s.checkLaunchTargets(req)
	if failure != nil {
		return nil, failure
	}
	m, err := s.createInstance(req, typ, reg, key)
	if err != nil {
		s.log.Error("launch instance", "err", err)
		return nil, newFailure(http.StatusInternalServerError, lambdaErr{Code: "global/unknown", Message: "Something unexpected occurred."})
	}
	return m, nil
}

// checkLaunchTargets resolves what a launch names: instance type, region, SSH key, file
// systems (the fake has none), and checks capacity.
func (s *Server) checkLaunchTargets(req launchRequest) (instanceType, region, sshKey, *launchFailure) {
	bad := func(field, message string) *launchFailure {
		return invalidParameters(message, map[string]lambdaErr{field: fieldError(message)})
	}
	typ, ok := findInstanceType(req.InstanceTypeName)
	if !ok {
		return typ, region{}, sshKey{}, bad("instance_type_name", fmt.Sprintf("Invalid instance type %q.", req.InstanceTypeName))
	}
	reg, ok := findRegion(req.RegionName)
	if !ok {
		return typ, reg, sshKey{}, bad("region_name", fmt.Sprintf("Invalid region %q.", req.RegionName))
	}
	key, ok := s.findKeyByName(req.SSHKeyNames[0])
	if !ok {
		return typ, reg, key, bad("ssh_key_names", fmt.Sprintf("SSH key %q does not exist.", req.SSHKeyNames[0]))
	}
	if len(req.FileSystemNames) > 0 {
		return typ, reg, key, bad("file_system_names", fmt.Sprintf("File system %q does not exist.", req.FileSystemNames[0]))
	}
	if !slices.Contains(s.regionsWithCapacity(), reg) {
		return typ, reg, key, newFailure(http.StatusBadRequest, lambdaErr{
			Code: "instance-operations/launch/insufficient-capacity", Message: "Not enough capacity to fulfill launch request.",
			Suggestion: "Choose an instance type with more availability, or try again later.",
		})
	}
	return typ, reg, key, nil
}

func (s *Server) findKeyByName(name string) (sshKey, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.keys {
		if k.Name == name {
			return *k, true
		}
	}
	return sshKey{}, false
}

// createInstance makes and starts the machine of a launch, set up as cloud-init would from
// the registered key and the user data's #cloud-config.
func (s *Server) createInstance(req launchRequest, typ instanceType, reg region, key sshKey) (*machine, error) {
	id := randomHex(16)
	name := ""
	if req.Name != nil {
		name = *req.Name
	}
	ip, err := s.allocateIP()
	if err != nil {
		return nil, err
	}
	m, err := s.newMachine(id, name)
	if err != nil {
		return nil, err
	}
	m.listen, m.fixedPort = ip, s.cfg.SSHPort
	m.inst = &instance{
		typ: typ, region: reg, sshKeyNames: []string{key.Name},
		fileSystemNames: []string{}, jupyterToken: randomHex(16),
	}
	m.authorized = keyLines(key.PublicKey)
	if req.UserData != nil {
		s.applyCloudConfig(m, *req.UserData)
	}
	if err := s.start(m); err != nil {
		return nil, err
	}
	return m, nil
}

// applyCloudConfig takes from user data what cloud-init would set up before sshd starts:
// the ed25519 host key, more authorized keys, and the lease settings in lease.env.
func (s *Server) applyCloudConfig(m *machine, userData string) {
	cc, ok, err := parseCloudConfig(userData)
	if err != nil {
		s.log.Warn("ignore user data", "machine", m.id, "err", err)
		return
	}
	if !ok {
		return
	}
	if cc.SSHKeys.ED25519Private != "" {
		if key, err := checkHostKey(cc.SSHKeys.ED25519Private); err == nil {
			m.hostKey = key
		} else {
			s.log.Warn("ignore cloud-config host key; the machine generates one", "machine", m.id, "err", err)
		}
	}
	for _, k := range cc.SSHAuthorizedKeys {
		m.authorized = append(m.authorized, keyLines(k)...)
	}
	env, err := cc.leaseEnv()
	if err != nil {
		s.log.Warn("ignore lease settings", "machine", m.id, "err", err)
		return
	}
	m.lease = s.leaseFrom(m.id, func(k string) string { return env[k] })
}

// allocateIP picks a loopback address 127.77.x.y that no instance uses and on which the
// instances' SSH port is free.
func (s *Server) allocateIP() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	used := map[string]bool{}
	for _, m := range s.order {
		if m.inst != nil && !m.removed {
			used[m.listen] = true
		}
	}
	var lastErr error
	for range 64 {
		n := s.nextIP % (256 * 254)
		s.nextIP++
		ip := fmt.Sprintf("127.77.%d.%d", n/254, n%254+1)
		if used[ip] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(s.cfg.SSHPort)))
		if err != nil {
			lastErr = err
			continue
		}
		_ = l.Close()
		return ip, nil
	}
	return "", fmt.Errorf("allocate loopback address: %w", errors.Join(errors.New("no free address"), lastErr))
}

func (s *Server) terminateInstances(w http.ResponseWriter, r *http.Request) {
	var req struct {
		InstanceIDs []string `json:"instance_ids"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.InstanceIDs) == 0 {
		writeInvalid(w, "instance_ids", "Must be a non-empty list of instance IDs.")
		return
	}
	now := time.Now()
	s.mu.Lock()
	var targets []*machine
	for _, id := range req.InstanceIDs {
		m, ok := s.lambdaInstance(id, now)
		if !ok || m.phase == phaseTerminated {
			s.mu.Unlock()
			instanceNotFound(w)
			return
		}
		targets = append(targets, m)
	}
	out := []instanceJSON{}
	for _, m := range targets {
		s.terminate(m, now)
		s.log.Info("terminate instance", "machine", m.id)
		out = append(out, s.instanceView(m))
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{"terminated_instances": out}})
}

func (s *Server) listSSHKeys(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	out := []sshKey{}
	for _, k := range s.keys {
		out = append(out, *k)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

func (s *Server) addSSHKey(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name      *string `json:"name"`
		PublicKey *string `json:"public_key"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeInvalid(w, "name", "Request body must be a JSON object with a name.")
		return
	}
	switch {
	case req.Name == nil || *req.Name == "":
		writeInvalid(w, "name", "Field is required.")
		return
	case len(*req.Name) > 64:
		writeInvalid(w, "name", "Must be at most 64 characters.")
		return
	}
	key := &sshKey{ID: randomHex(16), Name: *req.Name}
	var privateKey string
	if req.PublicKey != nil {
		if len(*req.PublicKey) > 4096 {
			writeInvalid(w, "public_key", "Must be at most 4096 characters.")
			return
		}
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(*req.PublicKey)); err != nil {
			writeInvalid(w, "public_key", "Invalid public key.")
			return
		}
		key.PublicKey = strings.TrimSpace(*req.PublicKey)
	} else {
		var err error
		if key.PublicKey, privateKey, err = generateKeyPair(key.Name); err != nil {
			s.log.Error("generate ssh key", "err", err)
			writeLambdaError(w, http.StatusInternalServerError, lambdaErr{Code: "global/unknown", Message: "Something unexpected occurred."}, nil)
			return
		}
	}
	if !s.registerKey(key) {
		writeInvalid(w, "name", fmt.Sprintf("An SSH key named %q already exists.", key.Name))
		return
	}
	out := map[string]any{"id": key.ID, "name": key.Name, "public_key": key.PublicKey}
	if privateKey != "" {
		out["private_key"] = privateKey
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

// registerKey adds key unless its name is taken.
func (s *Server) registerKey(key *sshKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.keys {
		if k.Name == key.Name {
			return false
		}
	}
	s.keys = append(s.keys, key)
	return true
}

func generateKeyPair(comment string) (public, private string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generate key pair: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", "", fmt.Errorf("encode public key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return "", "", fmt.Errorf("encode private key: %w", err)
	}
	public = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " " + comment
	return public, string(pem.EncodeToMemory(block)), nil
}

func (s *Server) deleteSSHKey(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	i := slices.IndexFunc(s.keys, func(k *sshKey) bool { return k.ID == id })
	if i < 0 {
		s.mu.Unlock()
		writeLambdaError(w, http.StatusNotFound, lambdaErr{Code: "global/object-does-not-exist", Message: "Specified SSH key does not exist."}, nil)
		return
	}
	for _, m := range s.order {
		if m.inst != nil && m.phase != phaseTerminated && slices.Contains(m.inst.sshKeyNames, s.keys[i].Name) {
			s.mu.Unlock()
			writeLambdaError(w, http.StatusBadRequest, lambdaErr{
				Code: "ssh-keys/key-in-use", Message: "SSH key is in use by an instance.",
				Suggestion: "Terminate the instances that use the key, then delete it.",
			}, nil)
			return
		}
	}
	s.keys = slices.Delete(s.keys, i, i+1)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{}})
}
