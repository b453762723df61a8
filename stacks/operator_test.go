package stacks_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/understudy-ai/training-service/programs/programtest"
)

// An operator audits and destroys a job's stack from the repository root with the pinned
// CLI, the repository's Pulumi.yaml, and the service's data directory, as docs/stacks.md
// tells them to.
func TestOperatorCLIDestroysStack(t *testing.T) {
	requireEngine(t)
	t.Parallel()
	ctx := t.Context()
	root := t.TempDir() // stands in for the repository root
	project, err := os.ReadFile(filepath.Join(repoRoot, "Pulumi.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "Pulumi.yaml"), project, 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(root, ".understudy") // the service's default data dir
	m := newManager(t, data)
	base := workerBaseDir(t)
	const id = "tr-operator"
	destroyOnCleanup(t, m, id)
	if _, err := m.Up(ctx, localSpec(t, id, programtest.NewKeys(t), base), nil); err != nil {
		t.Fatalf("Up: %v", err)
	}
	// Up returns once the machine is reported; the rest of its tags follow.
	m.Settle(id)

	pulumi := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, pulumiBin, args...)
		cmd.Dir = root
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "PULUMI_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env,
			"PULUMI_HOME="+filepath.Join(data, "pulumi-home"),
			"PULUMI_CONFIG_PASSPHRASE_FILE="+filepath.Join(data, "pulumi-passphrase"),
			"PULUMI_SKIP_UPDATE_CHECK=true",
		)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pulumi %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	var listed []struct {
		Name          string `json:"name"`
		ResourceCount int    `json:"resourceCount"`
	}
	if err := json.Unmarshal([]byte(pulumi("stack", "ls", "--json")), &listed); err != nil {
		t.Fatal(err)
	}
	if len(listed) != 1 || listed[0].Name != id || listed[0].ResourceCount < 2 {
		t.Fatalf("pulumi stack ls = %+v, want %s with its resources", listed, id)
	}
	var tags map[string]string
	if err := json.Unmarshal([]byte(pulumi("stack", "tag", "ls", "--stack", id, "--json")), &tags); err != nil {
		t.Fatal(err)
	}
	if tags["train_id"] != id || tags["provider"] != "local" {
		t.Errorf("pulumi stack tag ls = %v", tags)
	}

	pulumi("destroy", "--stack", id, "--yes", "--non-interactive")
	if pids := sshdsUnder(base); len(pids) > 0 {
		t.Errorf("sshd %v still runs after the operator's destroy", pids)
	}
	emptyDir(t, base)
	pulumi("stack", "rm", id, "--yes", "--non-interactive")
	list, err := m.List(ctx)
	if err != nil || len(list) != 0 {
		t.Errorf("List after the operator removed the stack = %+v, %v", list, err)
	}
	// The CLI wrote nothing into the repository root besides the data dir.
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "Pulumi.yaml" && e.Name() != ".understudy" {
			t.Errorf("the operator's CLI left %s in the repository root", e.Name())
		}
	}
}
