// Package api is the REST API of the service (gorilla/mux) over the small Service
// interface. One table (errors.go) maps error codes to HTTP statuses; a client sees an
// error's code, reason and client-safe message, never internal error text.
package api
