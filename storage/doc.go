// Package storage opens the weights store: a gocloud.dev blob bucket named by URL.
//
//	file:///abs/dir                       a directory on this host, objects as plain files
//	s3://bucket[/prefix][?region=…]        Amazon S3, or an S3-compatible store with
//	                                      ?endpoint=https://…&use_path_style=true
//	gs://bucket[/prefix]                  Google Cloud Storage
//	azblob://container[/prefix]           Azure Blob Storage (?storage_account=… or
//	                                      AZURE_STORAGE_ACCOUNT)
//
// The query parameters are the gocloud.dev drivers' own (s3blob, gcsblob, azureblob). A path
// after the bucket is a prefix every key is stored under. Credentials come from the usual
// environment of each cloud (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile or role,
// GOOGLE_APPLICATION_CREDENTIALS or the metadata server, AZURE_STORAGE_KEY or
// AZURE_CLIENT_ID/…), never from the URL: a URL that carries user info or a query parameter
// that looks like a secret (a key, token, signature or SAS) is refused, so that no secret
// ends up in a flag, a log line or a job's weights_uri.
//
// Open checks that the bucket answers and may be listed, so that a wrong name, missing
// credentials or an unreachable endpoint stop the service at start-up, not a job after its
// training. Errors name the URL without its query and say what is wrong; their codes are
// job codes (InvalidArgument for a bad URL, FailedPrecondition for a missing bucket or
// denied access, Unavailable for a store that does not answer).
package storage
