package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// commonFlags are the flags every client command takes.
type commonFlags struct {
	url, tokenFile string
	json           bool
}

// newFlagSet makes a client command's flag set. operands names its arguments in the usage
// line ("<train_id>"); -h and --help print the usage and end the command successfully.
func newFlagSet(name, operands, summary string, stderr io.Writer) (*flag.FlagSet, *commonFlags) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &commonFlags{}
	fs.StringVar(&c.url, "url", envOr("UNDERSTUDY_URL", "http://127.0.0.1:8080"), "service URL ($UNDERSTUDY_URL)")
	fs.StringVar(&c.tokenFile, "token-file", os.Getenv("UNDERSTUDY_API_TOKEN_FILE"),
		"file holding the API token (default $UNDERSTUDY_API_TOKEN, else ./.understudy/api-token)")
	fs.BoolVar(&c.json, "json", false, "print the service's JSON answer")
	fs.Usage = func() {
		line := "usage: understudy-train " + name + " [flags]"
		if operands != "" {
			line += " " + operands
		}
		fmt.Fprintf(fs.Output(), "%s\n\n%s\n\nflags:\n", line, summary)
		fs.PrintDefaults()
	}
	return fs, c
}

// parseFlags parses args; a flag it does not know is an error that suggests the closest one.
func parseFlags(fs *flag.FlagSet, args []string) error {
	out := fs.Output()
	fs.SetOutput(io.Discard) // the error is returned, said once, by main
	err := fs.Parse(args)
	fs.SetOutput(out)
	if err == nil {
		return nil
	}
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
		return err
	}
	msg := fs.Name() + ": " + err.Error()
	const undefined = "flag provided but not defined: -"
	if name, ok := strings.CutPrefix(err.Error(), undefined); ok {
		if guess := closestFlag(fs, strings.TrimLeft(name, "-")); guess != "" {
			msg += "; did you mean --" + guess + "?"
		}
	}
	return usageError(msg + " (understudy-train " + fs.Name() + " -h lists the flags)")
}

// closestFlag is the flag of fs nearest to name: one it starts, one it ends with
// (--api-token-file for --token-file), or within two edits.
func closestFlag(fs *flag.FlagSet, name string) string {
	best, bestDist := "", 3
	fs.VisitAll(func(f *flag.Flag) {
		d := editDistance(name, f.Name)
		if strings.HasPrefix(f.Name, name) && len(name) >= 3 {
			d = 1
		}
		if strings.HasSuffix(name, "-"+f.Name) {
			d = min(d, 2)
		}
		if d < bestDist {
			best, bestDist = f.Name, d
		}
	})
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// oneID parses args and returns the one train_id they name.
func oneID(fs *flag.FlagSet, args []string) (string, error) {
	if err := parseFlags(fs, args); err != nil {
		return "", err
	}
	if fs.NArg() != 1 {
		return "", usageError(fmt.Sprintf("%s: give exactly one <train_id> (understudy-train %s -h)", fs.Name(), fs.Name()))
	}
	return fs.Arg(0), nil
}

// connect checks the common flags and makes the client: the URL must be an http(s) URL, and
// the token comes from $UNDERSTUDY_API_TOKEN, the token file given, or the default one —
// the client remembers which, to name it when the service refuses it.
func (c *commonFlags) connect() (*client, error) {
	u, err := url.Parse(c.url)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usageError(fmt.Sprintf("--url %q is not a service URL: give the scheme and address, for example http://127.0.0.1:8080", c.url))
	}
	cl := &client{base: strings.TrimRight(c.url, "/"), http: newHTTPClient()}
	if tok := strings.TrimSpace(os.Getenv("UNDERSTUDY_API_TOKEN")); tok != "" {
		cl.token, cl.tokenSource = tok, "$UNDERSTUDY_API_TOKEN"
		return cl, nil
	}
	if c.tokenFile != "" {
		tok, err := readSecretFile(c.tokenFile)
		if err != nil {
			return nil, usageError("token file " + c.tokenFile + ": " + tokenFileProblem(err))
		}
		cl.token, cl.tokenSource = tok, "the token file "+c.tokenFile
		return cl, nil
	}
	p := filepath.Join(envOr("UNDERSTUDY_DATA_DIR", ".understudy"), "api-token")
	tok, err := readSecretFile(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, usageError("no API token: set UNDERSTUDY_API_TOKEN or pass --token-file (the default, " + p + ", does not exist)")
		}
		return nil, usageError("token file " + p + ": " + tokenFileProblem(err))
	}
	cl.token, cl.tokenSource = tok, "the token file "+p
	return cl, nil
}

// tokenFileProblem says what is wrong with a token file, and the fix.
func tokenFileProblem(err error) string {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "does not exist"
	case errors.Is(err, os.ErrPermission):
		return "cannot be read by this user"
	}
	return err.Error()
}
