// Package deps pins modules while the packages that use them are written.
package deps

import (
	_ "github.com/gorilla/mux"
	_ "github.com/pkg/sftp"
	_ "github.com/pulumi/pulumi-go-provider/infer"
	_ "github.com/pulumi/pulumi/sdk/v3/go/auto"
	_ "github.com/pulumi/pulumi/sdk/v3/go/pulumi"
	_ "gocloud.dev/blob/fileblob"
	_ "golang.org/x/crypto/ssh"
	_ "modernc.org/sqlite"
)
