// Package deploy_test checks the deployment files: the Kubernetes manifests decode strictly
// into the API's own types (a misspelt or misplaced field fails) and keep the promises of
// docs/operations.md; the image runs as a non-root user with what a local job needs.
package deploy_test

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/understudy-ai/training-service/store/postgres"
)

func documents(t *testing.T, name string) map[string][]byte {
	t.Helper()
	raw, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, doc := range bytes.Split(raw, []byte("\n---\n")) {
		var head struct{ Kind string }
		if err := yaml.Unmarshal(doc, &head); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if head.Kind == "" {
			continue
		}
		if _, dup := out[head.Kind]; dup {
			t.Fatalf("%s: two %s documents", name, head.Kind)
		}
		out[head.Kind] = doc
	}
	return out
}

func strict(t *testing.T, kind string, doc []byte, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(doc, into); err != nil {
		t.Fatalf("%s does not decode strictly: %v", kind, err)
	}
}

// The single-replica manifest and the replicas' one are held to the same rules.
func TestKubernetesManifests(t *testing.T) {
	for _, file := range []string{"kubernetes.yaml", "kubernetes-replicas.yaml"} {
		t.Run(file, func(t *testing.T) {
			_, pod, np := workload(t, file)
			checkPod(t, pod, np)
		})
	}
}

// workload decodes a manifest's documents strictly and returns them, with the pod template
// of its StatefulSet or Deployment and its NetworkPolicy.
func workload(t *testing.T, file string) (map[string][]byte, corev1.PodSpec, networkingv1.NetworkPolicy) {
	t.Helper()
	docs := documents(t, file)
	for _, kind := range []string{"Service", "NetworkPolicy"} {
		if docs[kind] == nil {
			t.Fatalf("no %s", kind)
		}
	}
	if docs["Secret"] != nil {
		t.Error("a Secret with values in the manifests: secrets are created from files, never from examples")
	}
	var pod corev1.PodSpec
	switch {
	case docs["StatefulSet"] != nil:
		var ss appsv1.StatefulSet
		strict(t, "StatefulSet", docs["StatefulSet"], &ss)
		pod = ss.Spec.Template.Spec
	case docs["Deployment"] != nil:
		var d appsv1.Deployment
		strict(t, "Deployment", docs["Deployment"], &d)
		pod = d.Spec.Template.Spec
	default:
		t.Fatal("no StatefulSet or Deployment")
	}
	var svc corev1.Service
	strict(t, "Service", docs["Service"], &svc)
	var np networkingv1.NetworkPolicy
	strict(t, "NetworkPolicy", docs["NetworkPolicy"], &np)
	return docs, pod, np
}

func checkPod(t *testing.T, pod corev1.PodSpec, np networkingv1.NetworkPolicy) {
	t.Helper()
	if sc := pod.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Error("the pod may run as root")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the pod gets a service account token it does not need")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	if c.SecurityContext == nil || c.SecurityContext.AllowPrivilegeEscalation == nil || *c.SecurityContext.AllowPrivilegeEscalation ||
		c.SecurityContext.Capabilities == nil || len(c.SecurityContext.Capabilities.Drop) == 0 {
		t.Error("the container may escalate or keeps capabilities")
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Error("no readiness probe on /readyz")
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Error("no liveness probe on /healthz")
	}
	for _, e := range c.Env {
		if e.Value != "" && (strings.Contains(strings.ToLower(e.Name), "token") || strings.Contains(strings.ToLower(e.Name), "key") ||
			strings.Contains(strings.ToLower(e.Name), "secret") || strings.Contains(strings.ToLower(e.Name), "passphrase")) && !strings.HasSuffix(e.Name, "_FILE") {
			t.Errorf("secret %s given as a value, not a file", e.Name)
		}
	}
	// The API token is a mounted file, owner-read-only.
	var secretVol *corev1.Volume
	for i, v := range pod.Volumes {
		if v.Secret != nil {
			secretVol = &pod.Volumes[i]
		}
	}
	if secretVol == nil || secretVol.Secret.DefaultMode == nil || *secretVol.Secret.DefaultMode != 0o400 {
		t.Fatal("secrets are not mounted as files with mode 0400")
	}
	mounted := ""
	for _, m := range c.VolumeMounts {
		if m.Name == secretVol.Name {
			mounted = m.MountPath
			if !m.ReadOnly {
				t.Error("the secrets mount is writable")
			}
		}
	}
	if !strings.Contains(strings.Join(c.Args, " "), "--token-file "+mounted+"/api-token") {
		t.Errorf("the token is not read from the mounted file: args %v", c.Args)
	}
	if len(np.Spec.PolicyTypes) != 2 || len(np.Spec.Ingress) == 0 || len(np.Spec.Egress) == 0 {
		t.Error("the NetworkPolicy does not restrict both directions")
	}
	for _, rule := range np.Spec.Ingress {
		if len(rule.From) == 0 {
			t.Error("an ingress rule admits everyone")
		}
	}
}

func TestImageRunsAsNonRootWithWhatALocalJobNeeds(t *testing.T) {
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	if n := strings.Count(text, "\nFROM "); n < 2 {
		t.Errorf("%d stages; want a multi-stage build", n+1)
	}
	lines := strings.Split(text, "\n")
	user := ""
	for _, l := range lines {
		if strings.HasPrefix(l, "USER ") {
			user = strings.Fields(l)[1]
		}
	}
	if user == "" || user == "root" || strings.HasPrefix(user, "0") {
		t.Errorf("the image runs as %q", user)
	}
	for _, want := range []string{"openssh-server", "python3", "make binaries", "UNDERSTUDY_LOCAL_PYTHON=", "--password '*'",
		// PID 1 must reap the processes jobs leave behind: the service does not.
		"tini", `ENTRYPOINT ["/usr/bin/tini", "--", `} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}

	// What the host built must not reach the image: make would take it as up to date.
	ignore, err := os.ReadFile(filepath.Join("..", ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	lines = strings.Split(string(ignore), "\n")
	for _, want := range []string{"bin/", "build/", ".understudy/", "dashboard/dist/*", "dashboard/web/node_modules/"} {
		if !slices.Contains(lines, want) {
			t.Errorf(".dockerignore does not leave out %s", want)
		}
	}
}

// healthcheckCommand is the shell command of dockerfile's HEALTHCHECK, continuation lines
// joined as Docker joins them.
func healthcheckCommand(t *testing.T, dockerfile string) string {
	t.Helper()
	for _, l := range strings.Split(strings.ReplaceAll(dockerfile, "\\\n", ""), "\n") {
		if rest, ok := strings.CutPrefix(l, "HEALTHCHECK "); ok {
			_, cmd, ok := strings.Cut(rest, " CMD ")
			if !ok {
				t.Fatalf("HEALTHCHECK without CMD: %q", l)
			}
			return cmd
		}
	}
	t.Fatal("the Dockerfile has no HEALTHCHECK")
	return ""
}

// The image's probe asks the address the service was told to listen on, so that changing
// UNDERSTUDY_LISTEN does not turn a healthy container unhealthy; the entrypoint leaves the
// address to that variable, which serve reads.
func TestImageHealthcheckFollowsTheListenAddress(t *testing.T) {
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	if !strings.Contains(text, "UNDERSTUDY_LISTEN=0.0.0.0:8080") {
		t.Error("the image does not listen on 0.0.0.0:8080 by UNDERSTUDY_LISTEN")
	}
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "ENTRYPOINT ") && strings.Contains(l, "--listen") {
			t.Errorf("the entrypoint sets --listen, which the HEALTHCHECK cannot see: %s", l)
		}
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatalf("curl is needed to run the image's HEALTHCHECK (make deps installs it): %v", err)
	}
	cmd := healthcheckCommand(t, text)

	var (
		mu    sync.Mutex
		asked []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.URL.Path)
		mu.Unlock()
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	}))
	defer srv.Close()
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// A port nothing listens on: the probe must fail there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, closed, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()

	for _, c := range []struct {
		listen  string
		healthy bool
	}{
		{"0.0.0.0:" + port, true},
		{"127.0.0.1:" + port, true},
		{":" + port, true},
		{"0.0.0.0:" + closed, false},
	} {
		probe := exec.Command("sh", "-c", cmd)
		probe.Env = append(os.Environ(), "UNDERSTUDY_LISTEN="+c.listen)
		out, err := probe.CombinedOutput()
		if healthy := err == nil; healthy != c.healthy {
			t.Errorf("UNDERSTUDY_LISTEN=%s: probe healthy=%v, want %v (%v: %s)", c.listen, healthy, c.healthy, err, out)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 3 || slices.ContainsFunc(asked, func(p string) bool { return p != "/healthz" }) {
		t.Errorf("the probe asked %q, want /healthz three times", asked)
	}
}

// Replicas: two or more, on a PostgreSQL store whose URL holds no password (a mounted
// password file does), each advertising its own pod address for the standby to pass
// requests on, sharing one ReadWriteMany data volume, and allowed to reach each other and
// the database.
func TestKubernetesReplicas(t *testing.T) {
	docs, pod, np := workload(t, "kubernetes-replicas.yaml")
	var d appsv1.Deployment
	strict(t, "Deployment", docs["Deployment"], &d)
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Error("fewer than two replicas")
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range pod.Containers[0].Env {
		env[e.Name] = e
	}
	if _, err := postgres.ParseURL(env["UNDERSTUDY_STORE_URL"].Value); err != nil {
		t.Errorf("UNDERSTUDY_STORE_URL: %v", err)
	}
	if !strings.HasPrefix(env["PGPASSFILE"].Value, "/run/secrets/understudy/") {
		t.Errorf("the database password is not a mounted file: PGPASSFILE %q", env["PGPASSFILE"].Value)
	}
	if ip := env["POD_IP"]; ip.ValueFrom == nil || ip.ValueFrom.FieldRef == nil || ip.ValueFrom.FieldRef.FieldPath != "status.podIP" ||
		env["UNDERSTUDY_ADVERTISE_URL"].Value != "http://$(POD_IP):8080" {
		t.Errorf("the replicas do not advertise their pod's address: %+v %+v", ip, env["UNDERSTUDY_ADVERTISE_URL"])
	}
	for _, name := range []string{"PULUMI_BACKEND_URL", "UNDERSTUDY_WEIGHTS_URL"} {
		if v := env[name].Value; v == "" || strings.HasPrefix(v, "file:") {
			t.Errorf("%s = %q: replicas need object storage", name, v)
		}
	}
	var pvc corev1.PersistentVolumeClaim
	strict(t, "PersistentVolumeClaim", docs["PersistentVolumeClaim"], &pvc)
	if !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteMany) {
		t.Errorf("the shared data volume is %v, want ReadWriteMany", pvc.Spec.AccessModes)
	}
	shared := false
	for _, v := range pod.Volumes {
		shared = shared || v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == pvc.Name
	}
	if !shared {
		t.Error("the pods do not mount the shared data volume")
	}
	peers, db := false, false
	for _, rule := range np.Spec.Ingress {
		for _, from := range rule.From {
			peers = peers || from.PodSelector != nil && from.PodSelector.MatchLabels["app.kubernetes.io/name"] == "understudy-train"
		}
	}
	for _, rule := range np.Spec.Egress {
		for _, p := range rule.Ports {
			db = db || p.Port != nil && p.Port.IntValue() == 5432
		}
	}
	if !peers || !db {
		t.Errorf("the NetworkPolicy lets the replicas reach each other: %v, the database: %v", peers, db)
	}
}
