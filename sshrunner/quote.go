package sshrunner

import "strings"

// shellQuote quotes s as one word for a POSIX shell: between single quotes, where nothing
// is expanded; a single quote inside ends the quoting, is escaped with a backslash, and
// the quoting resumes.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
