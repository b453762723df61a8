package sshrunner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sync"

	"github.com/pkg/sftp"

	"github.com/understudy-ai/training-service/job"
)

// uploadParallelFiles is how many files Upload sends at once; a runtime is many small files,
// where round trips dominate.
const uploadParallelFiles = 8

// Upload copies every file and directory of fsys into remoteDir on the machine, creating
// directories as needed. Files keep their permission bits (executables stay executable);
// directories keep theirs plus owner rwx, so that a later Upload can write into them. Each
// file is written to a temporary name and renamed into place, so a file is never seen half
// written and a read-only file from an earlier Upload is replaced.
func (c *Client) Upload(ctx context.Context, fsys fs.FS, remoteDir string) error {
	type file struct {
		name string
		mode fs.FileMode
	}
	var dirs []file
	var files []file
	err := fs.WalkDir(fsys, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := fs.Stat(fsys, name) // follows symbolic links
		if err != nil {
			return err
		}
		switch {
		case info.IsDir():
			if name != "." {
				dirs = append(dirs, file{name, info.Mode()})
			}
		case info.Mode().IsRegular():
			files = append(files, file{name, info.Mode()})
		default:
			return fmt.Errorf("%s: unsupported file type %s", name, info.Mode().Type())
		}
		return nil
	})
	if err != nil {
		return job.Wrap(job.CodeInvalidArgument, err, "upload files: read local files")
	}

	sc, done, err := c.openSFTP(ctx, "upload files", sftp.UseConcurrentWrites(true))
	if err != nil {
		return err
	}
	defer done()

	if err := mkdirAll(sc, remoteDir); err != nil {
		return opError(ctx, err, "upload files: create %s", remoteDir)
	}
	// WalkDir visits a directory before what it holds.
	for _, d := range dirs {
		if err := mkdir(sc, path.Join(remoteDir, d.name), d.mode.Perm()|0o700); err != nil {
			return opError(ctx, err, "upload files: create directory %s", d.name)
		}
	}

	work := make(chan file)
	errs := make(chan error, uploadParallelFiles)
	var wg sync.WaitGroup
	for range min(uploadParallelFiles, len(files)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range work {
				err := func() error {
					src, err := fsys.Open(f.name)
					if err != nil {
						return job.Wrap(job.CodeInvalidArgument, err, "upload files: open %s", f.name)
					}
					defer src.Close()
					return opError(ctx, putFile(ctx, sc, src, path.Join(remoteDir, f.name), f.mode.Perm()), "upload files: write %s", f.name)
				}()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var firstErr error
feed:
	for _, f := range files {
		select {
		case work <- f:
		case firstErr = <-errs:
			break feed
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if firstErr == nil {
		firstErr = <-errs
	}
	if firstErr == nil && ctx.Err() != nil {
		firstErr = opError(ctx, ctx.Err(), "upload files")
	}
	return firstErr
}

// UploadFile copies the local file localPath to remotePath, creating the remote parent
// directory, keeping the permission bits and replacing any file there by a rename.
func (c *Client) UploadFile(ctx context.Context, localPath, remotePath string) error {
	src, err := os.Open(localPath)
	if err != nil {
		return job.Wrap(job.CodeInvalidArgument, err, "upload file")
	}
	defer src.Close()
	info, err := src.Stat()
	if err != nil {
		return job.Wrap(job.CodeInvalidArgument, err, "upload file")
	}
	if !info.Mode().IsRegular() {
		return job.Errorf(job.CodeInvalidArgument, "upload file: %s is not a regular file", localPath)
	}
	sc, done, err := c.openSFTP(ctx, "upload file", sftp.UseConcurrentWrites(true))
	if err != nil {
		return err
	}
	defer done()
	if err := mkdirAll(sc, path.Dir(remotePath)); err != nil {
		return opError(ctx, err, "upload file: create %s", path.Dir(remotePath))
	}
	return opError(ctx, putFile(ctx, sc, src, remotePath, info.Mode().Perm()), "upload file: write %s", remotePath)
}

// putFile writes src to a temporary file beside dst, sets perm and renames it over dst.
func putFile(ctx context.Context, sc *sftp.Client, src io.Reader, dst string, perm fs.FileMode) (err error) {
	tmp := path.Join(path.Dir(dst), "."+path.Base(dst)+".upload")
	f, err := sc.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return err
	}
	defer func() {
		if f != nil {
			_ = f.Close()
		}
		if err != nil {
			_ = sc.Remove(tmp)
		}
	}()
	if _, err := f.ReadFromWithConcurrency(ctxReader{ctx, src}, 0); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	err = f.Close()
	f = nil
	if err != nil {
		return err
	}
	if _, ok := sc.HasExtension("posix-rename@openssh.com"); ok {
		return sc.PosixRename(tmp, dst)
	}
	// Plain SFTP rename refuses to replace an existing file.
	if err := sc.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return sc.Rename(tmp, dst)
}

// mkdir creates dir with perm, or sets perm on the directory already there.
func mkdir(sc *sftp.Client, dir string, perm fs.FileMode) error {
	if err := sc.Mkdir(dir); err != nil {
		info, statErr := sc.Stat(dir)
		if statErr != nil || !info.IsDir() {
			return err
		}
	}
	return sc.Chmod(dir, perm)
}

// mkdirAll is sftp's MkdirAll with the error of the directory that could not be made.
func mkdirAll(sc *sftp.Client, dir string) error {
	if info, err := sc.Stat(dir); err == nil {
		if !info.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", dir)
		}
		return nil
	}
	return sc.MkdirAll(dir)
}

// ctxReader fails reads once ctx has ended, so that a long copy stops.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
