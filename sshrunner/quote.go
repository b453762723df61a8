package sshrunner

import "strings"

// shellQuote quotes s as one word for a POSIX shell: single quotes, with each single quote
// inside written as '\''. Nothing inside single quotes is expanded.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
