// Package version holds the version of the in-repo Pulumi provider "understudy".
//
// It is a leaf with no imports so that programs can register resources with
// pulumi.Version(version.Version) without linking the provider SDK into the service, and so
// that the build can read the number with `go list -f` or a one-line grep.
package version

// Version is the provider's plugin version. Bump it whenever the provider binary changes in
// a way that stacks must notice: the service installs the plugin under this version.
const Version = "0.2.0"
