package sysuser

import (
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"testing"

	"github.com/understudy-ai/training-service/internal/testenv"
)

func TestRootAndBadNamesAreRefused(t *testing.T) {
	if _, err := Check("root"); err == nil || !strings.Contains(err.Error(), "never run as root") {
		t.Errorf("Check(root) = %v, want a refusal", err)
	}
	for _, name := range []string{"", "Root", "a b", "../x", "x:y", strings.Repeat("a", 40)} {
		if _, err := Ensure(t.Context(), name); err == nil {
			t.Errorf("Ensure(%q) succeeded", name)
		}
	}
	if _, err := Check("no-such-user-understudy"); err == nil {
		t.Error("Check of a missing user succeeded")
	}
}

// Ensure makes a user sshd accepts (its account not locked), finds it made on the next
// call, and Check refuses it once locked, naming the fix.
func TestEnsureCreatesAnUnlockedSystemUser(t *testing.T) {
	name := "understudy-t" + strconv.Itoa(os.Getpid()%100000)
	if os.Geteuid() != 0 {
		if _, err := Ensure(t.Context(), name); err == nil || !strings.Contains(err.Error(), "only root") {
			t.Errorf("Ensure as non-root = %v, want a refusal saying only root can create it", err)
		}
		testenv.RequireRoot(t, "creating a system user")
	}
	t.Cleanup(func() { exec.Command("userdel", name).Run() })
	u, err := Ensure(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	if u.Uid == "0" || u.Username != name {
		t.Fatalf("user = %+v", u)
	}
	if g, err := user.LookupGroupId(u.Gid); err != nil || g.Name != name {
		t.Errorf("group %s: %v %v, want a group of its own", u.Gid, g, err)
	}
	locked, err := lockedAccount(name)
	if err != nil || locked {
		t.Fatalf("new user locked = %v, %v", locked, err)
	}
	if _, err := Ensure(t.Context(), name); err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
	if out, err := exec.Command("usermod", "-L", name).CombinedOutput(); err != nil {
		t.Fatalf("usermod -L: %v %s", err, out)
	}
	if _, err := Check(name); err == nil || !strings.Contains(err.Error(), "usermod -p '*' "+name) {
		t.Errorf("Check of a locked user = %v, want the fix named", err)
	}
}
