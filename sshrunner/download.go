package sshrunner

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"math"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/understudy-ai/training-service/job"
)

// File is one file of a Manifest. Its JSON form is the one the runtime's done line uses.
type File struct {
	Path   string `json:"path"` // relative, slash-separated
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // lowercase hex
}

// Manifest lists downloaded files, sorted by path.
type Manifest struct {
	Files []File `json:"files"`
}

// DownloadOptions tunes Download. A nil *DownloadOptions means the defaults.
type DownloadOptions struct {
	// Expected maps a file's path (relative to the remote dir) to the sha256 it must have,
	// such as the runtime's own list from its done line. A file whose hash differs is not
	// stored, and Download fails; a listed file that is missing fails Download too. Files
	// not listed are downloaded without that check.
	Expected map[string]string
	// ParallelFiles is how many files are copied at once; default 4.
	ParallelFiles int
	// ChunkSize is the unit a file is read in; default 4 MiB. ParallelChunks chunks of a
	// file are read at once (default 4), each as concurrent SFTP reads, while earlier
	// chunks are hashed and written.
	ChunkSize      int
	ParallelChunks int
	// Connections is how many SSH connections carry the data: this Client's plus
	// Connections-1 dialled (at once) for the download and closed after it; default: as
	// many as the measured round trip needs (connectionsFor), 1 to 4. Sessions is how many
	// SFTP sessions share them, round robin; default: as many as the round trip needs
	// (sessionsFor), 1 to 4. Chunks of a large file are spread over all sessions. Each
	// session has its own SSH flow-control window (2 MiB in x/crypto/ssh, which caps one
	// session at 2 MiB per round trip over a long path) and its own SFTP server process;
	// each connection its own TCP window (a sender's buffer, 4 MiB by Linux's default, caps
	// one connection at about that per round trip), cipher stream and sshd process. Over
	// loopback or a LAN both are one. If an extra connection or session cannot be made, the
	// download goes on with those that could.
	Connections int
	Sessions    int
	// ContentType of the stored objects; default application/octet-stream.
	ContentType string
}

func (o *DownloadOptions) withDefaults() DownloadOptions {
	var r DownloadOptions
	if o != nil {
		r = *o
	}
	if r.ParallelFiles <= 0 {
		r.ParallelFiles = 4
	}
	if r.ChunkSize <= 0 {
		r.ChunkSize = 4 << 20
	}
	if r.ParallelChunks <= 0 {
		r.ParallelChunks = 4
	}
	if r.ContentType == "" {
		r.ContentType = "application/octet-stream"
	}
	return r
}

// Download copies every regular file under remoteDir (symbolic links followed, directories
// not) into bucket, each under prefix + "/" + its path relative to remoteDir, computing its
// sha256 while writing. Files are copied in parallel, large files as parallel chunks. The
// returned Manifest lists every file stored, sorted by path. On error some objects may
// have been stored already; none holds content that failed a check.
func (c *Client) Download(ctx context.Context, remoteDir string, bucket *blob.Bucket, prefix string, opts *DownloadOptions) (Manifest, error) {
	o := opts.withDefaults()
	for p, sum := range o.Expected {
		if _, err := hex.DecodeString(sum); err != nil || len(sum) != 2*sha256.Size {
			return Manifest{}, job.Errorf(job.CodeInvalidArgument, "download files: expected sha256 of %s is not hex: %q", p, sum)
		}
	}
	sftpOpts := []sftp.ClientOption{
		sftp.MaxPacketUnchecked(sftpMaxPacket),
		sftp.MaxConcurrentRequestsPerFile(64),
		sftp.UseConcurrentReads(true),
	}
	sc, done, err := c.openSFTP(ctx, "download files", sftpOpts...)
	if err != nil {
		return Manifest{}, err
	}
	defer done()

	files, err := listFiles(sc, remoteDir)
	if err != nil {
		return Manifest{}, opError(ctx, err, "download files: list %s", remoteDir)
	}
	have := make(map[string]bool, len(files))
	for _, f := range files {
		have[f.Path] = true
	}
	for p := range o.Expected {
		if !have[p] {
			return Manifest{}, job.WithReason(job.Wrap(job.CodeFailedPrecondition,
				fmt.Errorf("%w: %s is listed but missing", ErrChecksumMismatch, p), "download files"),
				job.CodeFailedPrecondition, "checksum_mismatch")
		}
	}
	// Largest first, so that the longest copy starts at once.
	slices.SortFunc(files, func(a, b File) int { return cmp.Compare(b.Size, a.Size) })

	sftps := []*sftp.Client{sc}
	if totalSize(files) > int64(o.ChunkSize) {
		if o.Sessions <= 0 || o.Connections <= 0 {
			rtt := roundTrip(sc)
			if o.Sessions <= 0 {
				o.Sessions = sessionsFor(rtt)
			}
			if o.Connections <= 0 {
				o.Connections = connectionsFor(rtt)
			}
			c.log.Debug("download sessions", "round_trip", rtt, "sessions", o.Sessions, "connections", o.Connections)
		}
		conns := append([]*Client{c}, c.dialExtra(ctx, o.Connections-1)...)
		for _, extra := range conns[1:] {
			defer extra.Close()
		}
		for i := 1; i < max(o.Sessions, len(conns)); i++ {
			esc, edone, err := conns[i%len(conns)].openSFTP(ctx, "download files", sftpOpts...)
			if err != nil {
				c.log.Warn("extra SFTP session for download failed, going on without it", "err", err)
				break
			}
			defer edone()
			sftps = append(sftps, esc)
		}
	}

	d := &downloader{
		sftps:  sftps,
		bucket: bucket,
		prefix: prefix,
		opts:   o,
		// Enough to never allocate in steady state: per file, the chunks read ahead and
		// the one being consumed.
		pool: newBufferPool(o.ChunkSize, o.ParallelFiles*(o.ParallelChunks+2)),
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan int)
	errs := make(chan error, o.ParallelFiles)
	var wg sync.WaitGroup
	for range min(o.ParallelFiles, len(files)) {
		wg.Go(func() {
			for i := range work {
				sum, err := d.copyFile(ctx, remoteDir, files[i], i)
				if err != nil {
					errs <- err
					cancel()
					return
				}
				files[i].SHA256 = sum
			}
		})
	}
feed:
	for i := range files {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return Manifest{}, err
	}
	if err := ctx.Err(); err != nil {
		return Manifest{}, opError(ctx, err, "download files")
	}
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	c.log.Info("downloaded", "files", len(files), "bytes", totalSize(files))
	return Manifest{Files: files}, nil
}

// What sessionsFor and connectionsFor size the download for: a fast cloud link
// (10 Gbit/s), one session's SSH flow-control window (2 MiB, x/crypto/ssh's and OpenSSH's)
// and one TCP connection's send buffer (4 MiB, Linux's default net.ipv4.tcp_wmem maximum,
// which bounds the bytes in flight on a connection).
const (
	downloadLinkBytesPerSecond = 1.25e9
	sessionWindowBytes         = 2 << 20
	connectionWindowBytes      = 4 << 20
	maxDownloadSessions        = 4
	maxDownloadConnections     = maxDownloadSessions
)

// connectionsFor returns how many SSH connections a download over a path with round trip
// rtt needs: enough TCP windows per round trip to fill the link, 1 to
// maxDownloadConnections. One within a rack; the cap over a WAN, where a single connection
// would move at most a send buffer per round trip whatever its sessions. An unknown round
// trip (0: the probe failed) gets one: extra connections cost handshakes and sshd processes
// on a machine that is already failing requests.
func connectionsFor(rtt time.Duration) int {
	if rtt <= 0 {
		return 1
	}
	n := int(math.Ceil(rtt.Seconds() * downloadLinkBytesPerSecond / connectionWindowBytes))
	return min(max(n, 1), maxDownloadConnections)
}

// dialExtra dials n more connections to c's machine at once (each handshake is several
// round trips) and returns those that succeeded; a failure is logged, not returned.
func (c *Client) dialExtra(ctx context.Context, n int) []*Client {
	if n <= 0 {
		return nil
	}
	got := make([]*Client, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			extra, err := Dial(ctx, c.target, &c.opts)
			if err != nil {
				c.log.Warn("extra connection for download failed, going on without it", "err", err)
				return
			}
			got[i] = extra
		})
	}
	wg.Wait()
	return slices.DeleteFunc(got, func(x *Client) bool { return x == nil })
}

// sessionsFor returns how many SFTP sessions a download over a path with round trip rtt
// needs: one session moves at most a window per round trip, so enough windows to fill the
// link, 1 to maxDownloadSessions. Over loopback or within a rack one is enough, and more
// only add SFTP server processes competing for the CPU the copy is bound by; over a WAN
// the cap. An unknown round trip (0) gets the cap.
func sessionsFor(rtt time.Duration) int {
	if rtt <= 0 {
		return maxDownloadSessions
	}
	n := int(math.Ceil(rtt.Seconds() * downloadLinkBytesPerSecond / sessionWindowBytes))
	return min(max(n, 1), maxDownloadSessions)
}

// roundTrip is the fastest of five small SFTP requests (realpath of "."): the path's round
// trip plus the server's time to answer. 0 when a request fails.
func roundTrip(sc *sftp.Client) time.Duration {
	best := time.Duration(math.MaxInt64)
	for range 5 {
		t := time.Now()
		if _, err := sc.Getwd(); err != nil {
			return 0
		}
		best = min(best, time.Since(t))
	}
	return best
}

func totalSize(files []File) int64 {
	var n int64
	for _, f := range files {
		n += f.Size
	}
	return n
}

// listFiles returns the regular files under dir with their sizes.
func listFiles(sc *sftp.Client, dir string) ([]File, error) {
	info, err := sc.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	var files []File
	w := sc.Walk(dir)
	for w.Step() {
		if err := w.Err(); err != nil {
			return nil, err
		}
		info := w.Stat()
		if info.Mode()&fs.ModeSymlink != 0 {
			if info, err = sc.Stat(w.Path()); err != nil {
				return nil, err
			}
		}
		if !info.Mode().IsRegular() {
			continue
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(w.Path(), dir), "/")
		files = append(files, File{Path: rel, Size: info.Size()})
	}
	return files, nil
}

func objectKey(prefix, rel string) string {
	if prefix = strings.TrimSuffix(prefix, "/"); prefix == "" {
		return rel
	}
	return prefix + "/" + rel
}

type downloader struct {
	sftps  []*sftp.Client // one per connection
	bucket *blob.Bucket
	prefix string
	opts   DownloadOptions
	pool   *bufferPool
}

// pieceSize is the unit pipe hashes and writes.
const pieceSize = 64 << 10

type chunk struct {
	buf *[]byte
	n   int
	err error
}

// copyFile copies the nth file f into the bucket and returns its sha256. Chunks are read
// ahead in parallel, spread over the connections, and consumed in order by the hash and
// the blob writer.
func (d *downloader) copyFile(ctx context.Context, remoteDir string, f File, n int) (string, error) {
	key := objectKey(d.prefix, f.Path)
	chunks := (f.Size + int64(d.opts.ChunkSize) - 1) / int64(d.opts.ChunkSize)
	var handles []*sftp.File
	defer func() {
		for _, h := range handles {
			_ = h.Close()
		}
	}()
	for k := range int(max(1, min(int64(len(d.sftps)), chunks))) {
		h, err := d.sftps[(n+k)%len(d.sftps)].Open(path.Join(remoteDir, f.Path))
		if err != nil {
			return "", opError(ctx, err, "download %s", f.Path)
		}
		handles = append(handles, h)
	}

	// Cancelling wctx before Close aborts the write: nothing is stored.
	wctx, abort := context.WithCancel(ctx)
	defer abort()
	w, err := d.bucket.NewWriter(wctx, key, &blob.WriterOptions{ContentType: d.opts.ContentType})
	if err != nil {
		return "", job.Wrap(storageCode(err), err, "download %s: open %s", f.Path, key)
	}
	h := sha256.New()
	written, err := d.pipe(ctx, handles, f.Size, h, w)
	if err == nil && written != f.Size {
		err = fmt.Errorf("read %d bytes, want %d", written, f.Size)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if want, ok := d.opts.Expected[f.Path]; err == nil && ok && !strings.EqualFold(want, sum) {
		abort()
		_ = w.Close()
		return "", job.WithReason(job.Wrap(job.CodeFailedPrecondition,
			fmt.Errorf("%w: %s has sha256 %s, want %s", ErrChecksumMismatch, f.Path, sum, want),
			"download files"), job.CodeFailedPrecondition, "checksum_mismatch")
	}
	if err != nil {
		abort()
		_ = w.Close()
		var je *job.Error
		if errors.As(err, &je) {
			return "", err
		}
		return "", opError(ctx, err, "download %s", f.Path)
	}
	if err := w.Close(); err != nil {
		return "", job.Wrap(storageCode(err), err, "download %s: store %s", f.Path, key)
	}
	return sum, nil
}

// pipe reads size bytes of a file open as handles, ParallelChunks chunks at a time, chunk
// i through handles[i%len(handles)], and feeds them in order to h and to dst. It returns
// the bytes written to dst.
func (d *downloader) pipe(ctx context.Context, handles []*sftp.File, size int64, h hash.Hash, dst io.Writer) (int64, error) {
	chunkSize := int64(d.opts.ChunkSize)
	nChunks := int((size + chunkSize - 1) / chunkSize)
	if nChunks == 0 {
		return 0, nil
	}
	// One channel per chunk, handed out in order; the channel's capacity bounds chunks
	// read ahead (and so memory) to ParallelChunks.
	results := make(chan chan chunk, d.opts.ParallelChunks)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(results)
		for i := range nChunks {
			off := int64(i) * chunkSize
			n := min(chunkSize, size-off)
			ch := make(chan chunk, 1)
			select {
			case results <- ch:
			case <-stop:
				return
			}
			wg.Go(func() {
				buf := d.pool.get()
				got, err := readFull(handles[i%len(handles)], (*buf)[:n], off)
				ch <- chunk{buf: buf, n: got, err: err}
			})
		}
	})
	defer func() {
		close(stop)
		// Give back the buffers of chunks read but not consumed.
		for ch := range results {
			d.pool.put((<-ch).buf)
		}
		wg.Wait()
	}()

	var written int64
	for ch := range results {
		c := <-ch
		if c.err != nil {
			d.pool.put(c.buf)
			return written, c.err
		}
		// Hash and store a small piece at a time, so that the write copies from a cache
		// the hash has just warmed: measurably cheaper than hashing and writing whole
		// chunks of several MiB.
		for b := (*c.buf)[:c.n]; len(b) > 0; {
			piece := b[:min(len(b), pieceSize)]
			h.Write(piece)
			m, err := dst.Write(piece)
			written += int64(m)
			if err != nil {
				d.pool.put(c.buf)
				return written, job.Wrap(storageCode(err), err, "write to storage")
			}
			b = b[len(piece):]
		}
		d.pool.put(c.buf)
		if err := ctx.Err(); err != nil {
			return written, err
		}
	}
	return written, nil
}

// bufferPool keeps up to a fixed number of chunk buffers for the whole download. Unlike a
// sync.Pool it is not emptied by every garbage collection, which the download's packet
// garbage triggers often: buffers stay mapped instead of being faulted in again.
type bufferPool struct {
	size int
	free chan *[]byte
}

func newBufferPool(size, keep int) *bufferPool {
	return &bufferPool{size: size, free: make(chan *[]byte, keep)}
}

func (p *bufferPool) get() *[]byte {
	select {
	case b := <-p.free:
		return b
	default:
		b := make([]byte, p.size)
		return &b
	}
}

func (p *bufferPool) put(b *[]byte) {
	select {
	case p.free <- b:
	default:
	}
}

// readFull fills b from rf at off. pkg/sftp reports a short answer to one of its
// concurrent requests as end of file; a server that caps reads below our packet size
// answers short, so keep reading until the file really ends.
func readFull(rf *sftp.File, b []byte, off int64) (int, error) {
	got := 0
	for got < len(b) {
		n, err := rf.ReadAt(b[got:], off+int64(got))
		got += n
		if err == io.EOF && n > 0 {
			continue
		}
		if err == io.EOF {
			return got, fmt.Errorf("file ended at %d bytes, before its size: %w", off+int64(got), io.ErrUnexpectedEOF)
		}
		if err != nil {
			return got, err
		}
	}
	return got, nil
}

// storageCode maps a gocloud error to a job code.
func storageCode(err error) job.Code {
	switch gcerrors.Code(err) {
	case gcerrors.NotFound:
		return job.CodeNotFound
	case gcerrors.PermissionDenied, gcerrors.FailedPrecondition:
		return job.CodeFailedPrecondition
	case gcerrors.Canceled:
		return job.CodeCanceled
	case gcerrors.DeadlineExceeded, gcerrors.ResourceExhausted, gcerrors.Internal, gcerrors.Unknown:
		return job.CodeUnavailable
	}
	return job.CodeInternal
}

// Verify reads back every file of m from bucket under prefix and checks its size and
// sha256. A difference fails with code FailedPrecondition, reason "checksum_mismatch",
// wrapping ErrChecksumMismatch; a missing object fails with code NotFound.
func Verify(ctx context.Context, bucket *blob.Bucket, prefix string, m Manifest) error {
	const parallel = 4
	work := make(chan File)
	errs := make(chan error, parallel)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range min(parallel, len(m.Files)) {
		wg.Go(func() {
			h := sha256.New()
			buf := make([]byte, 1<<20)
			for f := range work {
				if err := verifyFile(ctx, bucket, prefix, f, h, buf); err != nil {
					errs <- err
					cancel()
					return
				}
			}
		})
	}
feed:
	for _, f := range m.Files {
		select {
		case work <- f:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return job.Wrap(job.CodeCanceled, err, "verify files")
	}
	return nil
}

func verifyFile(ctx context.Context, bucket *blob.Bucket, prefix string, f File, h hash.Hash, buf []byte) error {
	key := objectKey(prefix, f.Path)
	r, err := bucket.NewReader(ctx, key, nil)
	if err != nil {
		return job.Wrap(storageCode(err), err, "verify %s", key)
	}
	defer r.Close()
	mismatch := func(format string, args ...any) error {
		return job.WithReason(job.Wrap(job.CodeFailedPrecondition,
			fmt.Errorf("%w: %s: %s", ErrChecksumMismatch, key, fmt.Sprintf(format, args...)),
			"verify files"), job.CodeFailedPrecondition, "checksum_mismatch")
	}
	if r.Size() != f.Size {
		return mismatch("size %d, want %d", r.Size(), f.Size)
	}
	h.Reset()
	n, err := io.CopyBuffer(h, r, buf)
	if err != nil {
		return job.Wrap(storageCode(err), err, "verify %s", key)
	}
	if n != f.Size {
		return mismatch("read %d bytes, want %d", n, f.Size)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); !strings.EqualFold(sum, f.SHA256) {
		return mismatch("sha256 %s, want %s", sum, f.SHA256)
	}
	return nil
}
