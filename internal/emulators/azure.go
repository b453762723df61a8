package emulators

import (
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/understudy-ai/training-service/internal/testenv"
)

// AzuriteAccount and AzuriteKey are Azurite's well-known development account and key
// (published in Azurite's documentation; not a secret).
const (
	AzuriteAccount = "devstoreaccount1"
	AzuriteKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// Azure is a running Azure Blob Storage emulator (Azurite's blob service). Its fields are
// read-only.
type Azure struct {
	// Host is the server's host:port on 127.0.0.1.
	Host string
	// Account and Key are the storage account and its shared key.
	Account, Key string
	// Container is the container created at start.
	Container string
}

// StartAzurite starts Azurite's blob service for t with one empty container. It is
// stopped when t ends.
func StartAzurite(t testing.TB) *Azure {
	t.Helper()
	bin := binary(t, "azurite-blob")
	if _, err := exec.LookPath("node"); err != nil {
		testenv.Missing(t, "Azurite needs Node.js (node) on PATH: "+err.Error())
	}
	port := launch(t, "azurite-blob", bin, nil, func(port int, dir string) []string {
		return []string{
			"--blobHost", "127.0.0.1", "--blobPort", fmt.Sprint(port),
			"--location", dir + "/azurite", "--silent",
			// The SDK in go.mod may speak a newer API version than this Azurite knows.
			"--skipApiVersionCheck", "--disableTelemetry",
		}
	}, "/")
	a := &Azure{Host: fmt.Sprintf("127.0.0.1:%d", port), Account: AzuriteAccount, Key: AzuriteKey}
	a.Container = a.NewBucket(t)
	return a
}

// NewBucket creates another empty container with a unique name and returns its name.
func (a *Azure) NewBucket(t testing.TB) string {
	t.Helper()
	name := uniqueName()
	cred, err := container.NewSharedKeyCredential(a.Account, a.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := container.NewClientWithSharedKeyCredential(fmt.Sprintf("http://%s/%s/%s", a.Host, a.Account, name), cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Create(ctx, nil); err != nil {
		t.Fatalf("create Azurite container %s: %v", name, err)
	}
	return name
}

// URL returns the gocloud.dev URL of the container created at start.
func (a *Azure) URL() string { return a.BucketURL(a.Container) }

// BucketURL returns the gocloud.dev URL of a container of this emulator: plain HTTP to a
// loopback address as a local emulator (account in the path, not the host name); the
// account and key come from the environment (Env).
func (a *Azure) BucketURL(name string) string { return a.ObjectURL(name, "") }

// ObjectURL returns the URL of one blob: BucketURL with the key as its path.
func (a *Azure) ObjectURL(name, key string) string {
	u := url.URL{Scheme: "azblob", Host: name, RawQuery: url.Values{
		"protocol": {"http"},
		"domain":   {a.Host},
		"localemu": {"true"},
	}.Encode()}
	if key != "" {
		u.Path = "/" + key
	}
	return u.String()
}

// Env returns the environment variables an Azure Storage client (this process or a child)
// needs to use the emulator: the account and its shared key, and the service's address as
// a local emulator, so that a bare azblob://<container> reaches it too. No other
// credential variable is set, so the shared key is the one used.
func (a *Azure) Env() []string {
	return []string{
		"AZURE_STORAGE_ACCOUNT=" + a.Account,
		"AZURE_STORAGE_KEY=" + a.Key,
		"AZURE_STORAGE_SAS_TOKEN=",
		"AZURE_STORAGE_CONNECTION_STRING=",
		"AZURE_STORAGE_DOMAIN=" + a.Host,
		"AZURE_STORAGE_PROTOCOL=http",
		"AZURE_STORAGE_IS_LOCAL_EMULATOR=true",
	}
}

// Setenv sets Env for the rest of t (so t cannot be parallel).
func (a *Azure) Setenv(t testing.TB) { t.Helper(); setenv(t, a.Env()) }
