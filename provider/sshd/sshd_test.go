package sshd_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/understudy-ai/training-service/internal/testenv"
	"github.com/understudy-ai/training-service/provider/sshd"
)

// The per-machine sshd lets the job's key in as its one user, for commands and SFTP, and
// nothing else: no port forwarding, no other user.
func TestServerRefusesForwardingAndOtherUsers(t *testing.T) {
	testenv.RequireSSHD(t)
	dir := testenv.SSHDDir(t, "sshd-")
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	block, _ := ssh.MarshalPrivateKey(hostPriv, "")
	hostSigner, _ := ssh.NewSignerFromKey(hostPriv)
	_, userPriv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(userPriv)
	f := sshd.FilesOf(dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pid, port, err := sshd.Start(ctx, f, sshd.Config{
		HostPrivateKey: string(pem.EncodeToMemory(block)),
		AuthorizedKeys: []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sshd.Stop(context.Background(), f, pid) })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	dial := func(name string) (*ssh.Client, error) {
		return ssh.Dial("tcp", addr, &ssh.ClientConfig{User: name, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
			HostKeyCallback: ssh.FixedHostKey(hostSigner.PublicKey()), Timeout: 10 * time.Second})
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	c, err := dial(me.Username)
	if err != nil {
		t.Fatalf("log in as %s: %v", me.Username, err)
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := s.Output("echo ok"); err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("run a command: %q, %v", out, err)
	}
	// A listener of the test's own, which a forwarding server would connect to.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if conn, err := c.Dial("tcp", ln.Addr().String()); err == nil {
		conn.Close()
		t.Error("the server forwarded a TCP connection")
	}
	if l, err := c.Listen("tcp", "127.0.0.1:0"); err == nil {
		l.Close()
		t.Error("the server accepted a remote forward")
	}
	other := "nobody"
	if me.Username == other {
		other = "root"
	}
	if c2, err := dial(other); err == nil {
		c2.Close()
		t.Errorf("the job's key logged in as %s too", other)
	}
	raw, err := os.ReadFile(f.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"DisableForwarding yes", "AllowUsers " + me.Username, "MaxAuthTries 3", "LoginGraceTime 30", "ClientAliveInterval"} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("config lacks %q", want)
		}
	}
}
