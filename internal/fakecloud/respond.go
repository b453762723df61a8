package fakecloud

import (
	"encoding/json"
	"net/http"
)

func writeJSON(w http.ResponseWriter, status int, body any) {
	writeTyped(w, status, "application/json", body)
}

func writeTyped(w http.ResponseWriter, status int, contentType string, body any) {
	data, err := json.Marshal(body)
	if err != nil {
		http.Error(w, "encode response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_, _ = w.Write(append(data, '\n'))
}

// problem is RunPod's RFC 9457 error body.
type problem struct {
	Title  string   `json:"title"`
	Status int      `json:"status"`
	Detail string   `json:"detail"`
	Errors []string `json:"errors,omitempty"`
}

// writeProblem answers with RunPod's application/problem+json error envelope.
func writeProblem(w http.ResponseWriter, status int, detail string, errs []string) {
	writeTyped(w, status, "application/problem+json", problem{
		Title: http.StatusText(status), Status: status, Detail: detail, Errors: errs,
	})
}

// lambdaErr is Lambda's error object.
type lambdaErr struct {
	Code       string `json:"code"`
	Message    string `json:"message"`
	Suggestion string `json:"suggestion,omitempty"`
}

// writeLambdaError answers with Lambda's error envelope.
func writeLambdaError(w http.ResponseWriter, status int, e lambdaErr, fieldErrors map[string]lambdaErr) {
	writeJSON(w, status, struct {
		Error       lambdaErr            `json:"error"`
		FieldErrors map[string]lambdaErr `json:"field_errors,omitempty"`
	}{e, fieldErrors})
}

type graphQLError struct {
	Message string `json:"message"`
}

// writeGraphQLError answers with a GraphQL error body and no data.
func writeGraphQLError(w http.ResponseWriter, status int, message string) {
	writeJSON(w, status, struct {
		Data   any            `json:"data"`
		Errors []graphQLError `json:"errors"`
	}{nil, []graphQLError{{Message: message}}})
}
