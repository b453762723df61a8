// Package openapitest checks HTTP responses against an OpenAPI 3.1 document: the
// response's path, method and status must be documented, its content type must be one the
// document names for that status, and a JSON body must match the schema given for it.
// The end-to-end tests run every response they see through it.
package openapitest
