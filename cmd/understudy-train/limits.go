package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/understudy-ai/training-service/api"
	"github.com/understudy-ai/training-service/dataset"
	"github.com/understudy-ai/training-service/internal/fsroot"
	"github.com/understudy-ai/training-service/lifecycle"
)

// Limits is the part of the serve configuration that bounds what a client may make the
// service read, hold or run.
type Limits struct {
	// DatasetRoots and ModelRoots are the directories a local dataset_uri or slm_type may
	// name something under; none: local datasets (models) are refused.
	DatasetRoots []string
	ModelRoots   []string
	// MaxDatasetBytes and MaxDatasetRecords bound a dataset from any source.
	MaxDatasetBytes   int64
	MaxDatasetRecords int
	// MaxPairs bounds a start's inline training_pairs.
	MaxPairs int
	// MaxQueued bounds the jobs waiting for a machine; MaxStreams the open log streams.
	MaxQueued  int
	MaxStreams int
	// DefaultMaxDuration is the max_duration_seconds of a start that gives none; 0: none.
	DefaultMaxDuration time.Duration
}

// rootsFlag is a repeatable flag of directories, each value also split on commas; its
// default (from the environment) is replaced by the first value given.
type rootsFlag struct {
	dirs *[]string
	set  bool
}

func (r *rootsFlag) String() string {
	if r.dirs == nil {
		return ""
	}
	return strings.Join(*r.dirs, ",")
}

func (r *rootsFlag) Set(v string) error {
	if !r.set {
		*r.dirs, r.set = nil, true
	}
	*r.dirs = append(*r.dirs, splitList(v)...)
	return nil
}

func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// register adds the limits' flags to fs, with defaults from the environment.
func (l *Limits) register(fs *flag.FlagSet) error {
	l.DatasetRoots = splitList(os.Getenv("UNDERSTUDY_DATASET_ROOTS"))
	l.ModelRoots = splitList(os.Getenv("UNDERSTUDY_MODEL_ROOTS"))
	fs.Var(&rootsFlag{dirs: &l.DatasetRoots}, "dataset-root", "directory a file:// dataset_uri may name a file under, or object-store prefix (s3://bucket/prefix?region=…, gs://bucket, azblob://container) an s3://, gs:// or azblob:// dataset_uri may name an object under (repeatable or comma-separated; default $UNDERSTUDY_DATASET_ROOTS; none: such datasets are refused)")
	fs.Var(&rootsFlag{dirs: &l.ModelRoots}, "model-root", "directory a local slm_type may name a model directory under (repeatable or comma-separated; default $UNDERSTUDY_MODEL_ROOTS; none: local models are refused)")
	maxBytes, err := envInt("UNDERSTUDY_MAX_DATASET_BYTES", lifecycle.DefaultMaxDatasetBytes)
	if err != nil {
		return err
	}
	fs.Int64Var(&l.MaxDatasetBytes, "max-dataset-bytes", maxBytes, "largest dataset, in bytes, a start may bring (file, object or inline)")
	for _, f := range []struct {
		p         *int
		name, env string
		def       int
		usage     string
	}{
		{&l.MaxDatasetRecords, "max-dataset-records", "UNDERSTUDY_MAX_DATASET_RECORDS", lifecycle.DefaultMaxDatasetRecords, "most records a dataset may hold"},
		{&l.MaxPairs, "max-pairs", "UNDERSTUDY_MAX_PAIRS", api.DefaultMaxPairs, "most inline training_pairs a start may hold"},
		{&l.MaxQueued, "max-queued", "UNDERSTUDY_MAX_QUEUED", lifecycle.DefaultMaxQueued, "most jobs waiting for a machine; a start beyond is a 429"},
		{&l.MaxStreams, "max-streams", "UNDERSTUDY_MAX_STREAMS", api.DefaultMaxStreams, "most log streams open at once; one more is a 429"},
	} {
		def, err := envInt(f.env, int64(f.def))
		if err != nil {
			return err
		}
		fs.IntVar(f.p, f.name, int(def), f.usage)
	}
	def, err := time.ParseDuration(envOr("UNDERSTUDY_DEFAULT_MAX_DURATION", "24h"))
	if err != nil {
		return errors.New("UNDERSTUDY_DEFAULT_MAX_DURATION: " + err.Error())
	}
	fs.DurationVar(&l.DefaultMaxDuration, "default-max-duration", def, "max_duration_seconds of a start that gives none (0: no limit)")
	return nil
}

func envInt(name string, def int64) (int64, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s %q: want an integer", name, v)
	}
	return n, nil
}

// Validate names the first bad flag and resolves the roots to absolute directories. A
// limit of 0 takes the default.
func (l *Limits) Validate() error {
	var err error
	dirs, stores := dataset.SplitRoots(l.DatasetRoots)
	if dirs, err = fsroot.Check("--dataset-root", dirs); err != nil {
		return err
	}
	for _, s := range stores {
		if err := dataset.CheckStoreRoot(s); err != nil {
			return fmt.Errorf("--dataset-root %w", err)
		}
	}
	l.DatasetRoots = append(dirs, stores...)
	if l.ModelRoots, err = fsroot.Check("--model-root", l.ModelRoots); err != nil {
		return err
	}
	switch {
	case l.MaxDatasetBytes < 0:
		return fmt.Errorf("--max-dataset-bytes %d: want at least 1 (0: the default)", l.MaxDatasetBytes)
	case l.MaxDatasetRecords < 0:
		return fmt.Errorf("--max-dataset-records %d: want at least 1 (0: the default)", l.MaxDatasetRecords)
	case l.MaxPairs < 0:
		return fmt.Errorf("--max-pairs %d: want at least 1 (0: the default)", l.MaxPairs)
	case l.MaxQueued < 0:
		return fmt.Errorf("--max-queued %d: want at least 1 (0: the default)", l.MaxQueued)
	case l.MaxStreams < 0:
		return fmt.Errorf("--max-streams %d: want at least 1 (0: the default)", l.MaxStreams)
	case l.DefaultMaxDuration < 0 || l.DefaultMaxDuration > 30*24*time.Hour:
		return fmt.Errorf("--default-max-duration %v: want 0 (none) up to 720h", l.DefaultMaxDuration)
	case l.DefaultMaxDuration > 0 && l.DefaultMaxDuration < time.Second:
		return fmt.Errorf("--default-max-duration %v: want 0 (none) or at least 1s", l.DefaultMaxDuration)
	}
	return nil
}
