// Package fsroot confines paths that clients name (a local dataset, a local model directory)
// to directories an operator configured, through os.Root: a path must lie under one of the
// roots, and opening it refuses ".." and symbolic links that lead out of the root.
package fsroot

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
)

// ErrOutside is returned when a path lies under none of the roots.
var ErrOutside = errors.New("path lies outside the allowed directories")

// Open returns the root among roots that holds path p (absolute), opened, and p relative to
// it ("." for the root itself). The match is lexical on the cleaned path, against each root
// as configured and as its symbolic links resolve; the returned os.Root then refuses any
// escape when the caller opens rel within it. It is ErrOutside when no root holds p.
func Open(roots []string, p string) (*os.Root, string, error) {
	if !filepath.IsAbs(p) {
		return nil, "", ErrOutside
	}
	p = filepath.Clean(p)
	for _, root := range roots {
		abs, err := filepath.Abs(root)
		if err != nil {
			continue
		}
		cands := []string{abs}
		if real, err := filepath.EvalSymlinks(abs); err == nil && real != abs {
			cands = append(cands, real)
		}
		for _, c := range cands {
			rel, ok := within(c, p)
			if !ok {
				continue
			}
			r, err := os.OpenRoot(abs)
			if err != nil {
				return nil, "", err
			}
			return r, rel, nil
		}
	}
	return nil, "", ErrOutside
}

func within(root, p string) (string, bool) {
	rel, err := filepath.Rel(root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return "", false
	}
	return rel, true
}

// Escaped reports whether err is os.Root's refusal of a path that leaves the root (through
// ".." or a symbolic link). The standard library does not export that error, so its text
// is matched; any other failure to open is not an escape.
func Escaped(err error) bool {
	var pe *os.PathError
	if !errors.As(err, &pe) {
		return false
	}
	return strings.Contains(pe.Err.Error(), "escapes from parent")
}

// Check resolves the roots to absolute paths and checks that each is a directory; name is
// the flag for the error message.
func Check(name string, roots []string) ([]string, error) {
	out := make([]string, 0, len(roots))
	for _, r := range roots {
		abs, err := filepath.Abs(r)
		if err != nil {
			return nil, errors.New(name + " " + r + ": " + err.Error())
		}
		st, err := os.Stat(abs)
		if err != nil {
			return nil, errors.New(name + " " + r + ": no such directory")
		}
		if !st.IsDir() {
			return nil, errors.New(name + " " + r + ": not a directory")
		}
		out = append(out, abs)
	}
	return out, nil
}
