// Package emulators runs object-storage emulators for tests, so that code written against
// gocloud.dev buckets is tested against the wire protocols of S3, Google Cloud Storage and
// Azure Blob Storage rather than against fakes of them:
//
//   - S3: moto's server,
//   - GCS: fsouza/fake-gcs-server,
//   - Azure Blob Storage: Azurite's blob service.
//
// scripts/emulators.sh installs them from package registries into a cache outside the clone
// and prints its directory; `make test` passes it as $UNDERSTUDY_EMULATORS. Without it (or
// without a binary in it) a test fails under `make test` and skips, saying why, elsewhere
// (testenv.Missing).
//
// Typical use:
//
//	s3 := emulators.StartS3(t)
//	s3.Setenv(t) // credentials and endpoints for this process
//	w, err := storage.OpenWeights(ctx, s3.URL())
//
// and, for a child process (the Pulumi CLI, the service binary), s3.Env() appended to its
// environment.
//
// Each Start… runs one emulator for the test, on a free port on 127.0.0.1 with its data in
// t.TempDir(), waits until it answers, creates a bucket (container) with a unique name and
// returns what a client needs: the gocloud.dev URL of the bucket and the environment
// variables of the credentials. Credentials never appear in a URL; they come from the
// environment, as they do in production. The emulator is stopped when the test ends, by its
// process id and its process group, which it leads.
//
// Setenv changes the process environment, so tests that call it cannot run in parallel;
// that is a property of the cloud SDKs (STORAGE_EMULATOR_HOST, AWS_ACCESS_KEY_ID are read
// from the environment), not of the emulators.
package emulators
