package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/understudy-ai/training-service/api"
	"github.com/understudy-ai/training-service/dataset"
	"github.com/understudy-ai/training-service/internal/hubcheck"
	"github.com/understudy-ai/training-service/internal/sysuser"
	"github.com/understudy-ai/training-service/job"
	"github.com/understudy-ai/training-service/lifecycle"
	"github.com/understudy-ai/training-service/metrics"
	"github.com/understudy-ai/training-service/programs"
	"github.com/understudy-ai/training-service/provider/cloudapi"
	"github.com/understudy-ai/training-service/stacks"
	"github.com/understudy-ai/training-service/storage"
	"github.com/understudy-ai/training-service/store"
	"github.com/understudy-ai/training-service/store/postgres"
	"github.com/understudy-ai/training-service/store/sqlite"
	"github.com/understudy-ai/training-service/trainer"
	"github.com/understudy-ai/training-service/webhook"
)

// Config is the service's configuration: defaults in code, flags and environment on top.
type Config struct {
	Listen  string
	DataDir string
	// StoreURL is the job store: "" for SQLite in the data dir, or a postgres:// URL that
	// several replicas share (one leads, the others stand by). AdvertiseURL is where the
	// other replicas reach this one's API when it leads (default from Listen, unless that
	// is a wildcard address).
	StoreURL      string
	AdvertiseURL  string
	TokenFile     string
	PublicURL     string
	MaxConcurrent int
	WeightsURL    string
	BackendURL    string
	PulumiBin     string
	PluginBin     string
	LocalPython   string
	// LocalUser is the user local jobs run as; LocalWorkersDir where their workers live
	// (local.go decides the defaults).
	LocalUser       string
	LocalWorkersDir string
	RuntimeDir      string
	LogFormat       string
	LogLevel        string
	MachineLease    time.Duration
	// Limits bound what a client may make the service read, hold or run (limits.go).
	Limits Limits
	// MaxHourlySpend caps the hourly prices of the machines held at once (USD; 0: no cap);
	// StopGrace is how long a stopped job's runtime has to checkpoint after SIGTERM.
	MaxHourlySpend float64
	StopGrace      time.Duration
	// MaxAttempts is how many machines a job may run on: one taken away (preempted, lost)
	// is replaced until then. CheckpointEvery is how often the runtime writes a checkpoint,
	// which the service copies off the machine at once.
	MaxAttempts     int
	CheckpointEvery time.Duration
	// WebhookURL receives a signed POST of the job's status document on every status
	// change; WebhookSecretFile holds the signing secret (owner-only).
	WebhookURL        string
	WebhookSecretFile string
	// MetricsListen, when set, serves /metrics there without a token (and not on Listen);
	// otherwise /metrics is on Listen and needs the API token.
	MetricsListen string
	// HubCheck has a start whose slm_type is a Hugging Face id asked about at HubEndpoint
	// before anything is made; off, such ids are checked only on the machine.
	HubCheck    bool
	HubEndpoint string
}

// Validate names the first bad field.
func (c *Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("--listen %q: want host:port", c.Listen)
	}
	if c.DataDir == "" {
		return errors.New("--data-dir must not be empty")
	}
	if c.StoreURL != "" {
		if _, err := postgres.ParseURL(c.StoreURL); err != nil {
			return fmt.Errorf("--store-url: %s", job.MessageOf(err))
		}
	}
	if c.AdvertiseURL != "" {
		u, err := url.Parse(c.AdvertiseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || strings.Trim(u.Path, "/") != "" {
			return fmt.Errorf("--advertise-url %q: want http://host:port (or https), where the other replicas reach this one", c.AdvertiseURL)
		}
	}
	if c.MaxConcurrent < 1 || c.MaxConcurrent > 1000 {
		return fmt.Errorf("--max-concurrent %d: want 1..1000", c.MaxConcurrent)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("--log-format %q: want text or json", c.LogFormat)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	if err := c.Limits.Validate(); err != nil {
		return err
	}
	if c.MachineLease != 0 && c.MachineLease < 10*time.Second {
		return fmt.Errorf("--machine-lease %v: want 0 (off) or at least 10s", c.MachineLease)
	}
	if !(c.MaxHourlySpend >= 0 && c.MaxHourlySpend <= 1e6) {
		return fmt.Errorf("--max-hourly-spend %v: want 0 (no cap) up to 1e6 USD per hour", c.MaxHourlySpend)
	}
	if c.StopGrace < 0 || c.StopGrace > time.Hour {
		return fmt.Errorf("--stop-grace %v: want 0 (the default, 60s) up to 1h", c.StopGrace)
	}
	if c.MaxAttempts < 0 || c.MaxAttempts > 100 {
		return fmt.Errorf("--max-attempts %d: want 0 (the default, 3) up to 100", c.MaxAttempts)
	}
	if c.CheckpointEvery != 0 && (c.CheckpointEvery < time.Second || c.CheckpointEvery > 24*time.Hour) {
		return fmt.Errorf("--checkpoint-every %v: want 0 (the default, 5m) or 1s up to 24h", c.CheckpointEvery)
	}
	if c.WebhookURL != "" {
		u, err := url.Parse(c.WebhookURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			return fmt.Errorf("--webhook-url %q: want an http or https URL without credentials", c.WebhookURL)
		}
		if c.WebhookSecretFile == "" {
			return errors.New("--webhook-url needs --webhook-secret-file: every delivery is signed")
		}
	} else if c.WebhookSecretFile != "" {
		return errors.New("--webhook-secret-file without --webhook-url")
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return fmt.Errorf("--metrics-listen %q: want host:port", c.MetricsListen)
		}
	}
	if _, err := hubcheck.ParseEndpoint(c.HubEndpoint); err != nil {
		return fmt.Errorf("--hub-endpoint %q: want an http or https URL without credentials, query or fragment", c.HubEndpoint)
	}
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: understudy-train serve [flags]\n\nRun the service: the REST API, the dashboard and the jobs' drivers.\n\nflags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.Listen, "listen", envOr("UNDERSTUDY_LISTEN", "127.0.0.1:8080"), "address to listen on (port 0: a free port, named on stdout)")
	fs.StringVar(&cfg.DataDir, "data-dir", envOr("UNDERSTUDY_DATA_DIR", "./.understudy"), "directory for the job store, Pulumi state, weights and per-job keys")
	fs.StringVar(&cfg.StoreURL, "store-url", os.Getenv("UNDERSTUDY_STORE_URL"), "job store: a postgres://user@host:port/database URL that several replicas share (password from $PGPASSWORD or $PGPASSFILE, never the URL) (default: SQLite in the data dir)")
	fs.StringVar(&cfg.AdvertiseURL, "advertise-url", os.Getenv("UNDERSTUDY_ADVERTISE_URL"), "with --store-url: the URL at which the other replicas reach this one's API while it leads, to pass requests on (default http://<listen>, unless its host is a wildcard)")
	fs.StringVar(&cfg.TokenFile, "token-file", os.Getenv("UNDERSTUDY_API_TOKEN_FILE"), "file holding the API token (default: $UNDERSTUDY_API_TOKEN, else <data-dir>/api-token, made if missing)")
	fs.StringVar(&cfg.PublicURL, "public-url", os.Getenv("UNDERSTUDY_PUBLIC_URL"), "base URL at which training machines reach this service (default http://<listen>)")
	fs.IntVar(&cfg.MaxConcurrent, "max-concurrent", 4, "jobs that may hold a machine at once")
	fs.StringVar(&cfg.WeightsURL, "weights-url", os.Getenv("UNDERSTUDY_WEIGHTS_URL"), "weights store URL: file:///dir, s3://bucket?region=… (S3-compatible: &endpoint=http://host:port&use_path_style=true), gs://bucket or azblob://container; credentials from the environment (default file://<data-dir>/weights)")
	fs.StringVar(&cfg.BackendURL, "backend-url", os.Getenv("PULUMI_BACKEND_URL"), "Pulumi state backend: file:///dir, s3://…, gs://…, azblob://… or https://api.pulumi.com (with PULUMI_ACCESS_TOKEN) (default file://<data-dir>/pulumi)")
	fs.StringVar(&cfg.PulumiBin, "pulumi", os.Getenv("UNDERSTUDY_PULUMI"), "Pulumi CLI (default: pulumi next to this binary, else PATH)")
	fs.StringVar(&cfg.PluginBin, "provider-plugin", os.Getenv("UNDERSTUDY_PROVIDER_PLUGIN"), "pulumi-resource-understudy (default: next to this binary)")
	fs.StringVar(&cfg.LocalPython, "local-python", os.Getenv("UNDERSTUDY_LOCAL_PYTHON"), "Python interpreter for jobs on the local provider (default: bootstrap one)")
	fs.StringVar(&cfg.LocalUser, "local-user", os.Getenv("UNDERSTUDY_LOCAL_USER"), "unprivileged user local jobs run as (default, as root: "+sysuser.DefaultWorker+", created when missing; otherwise this service's own user)")
	fs.StringVar(&cfg.LocalWorkersDir, "local-workers-dir", os.Getenv("UNDERSTUDY_LOCAL_WORKERS_DIR"), "directory of the local jobs' machines (default: <data-dir>/workers, or "+defaultWorkersParent+"/workers-<hash> when jobs run as another user)")
	fs.StringVar(&cfg.RuntimeDir, "runtime-dir", os.Getenv("UNDERSTUDY_RUNTIME_DIR"), "ship the training runtime from this directory instead of the embedded one (development)")
	fs.StringVar(&cfg.LogFormat, "log-format", envOr("UNDERSTUDY_LOG_FORMAT", "text"), "text or json")
	fs.StringVar(&cfg.LogLevel, "log-level", envOr("UNDERSTUDY_LOG_LEVEL", "info"), "debug, info, warn or error")
	defaultLease, err := time.ParseDuration(envOr("UNDERSTUDY_MACHINE_LEASE", "15m"))
	if err != nil {
		return usageError("UNDERSTUDY_MACHINE_LEASE: " + err.Error())
	}
	fs.DurationVar(&cfg.MachineLease, "machine-lease", defaultLease, "a cloud machine stops itself when the service has not renewed its lease for this long (0: off)")
	var defaultSpend float64
	if v := os.Getenv("UNDERSTUDY_MAX_HOURLY_SPEND"); v != "" {
		if _, err := fmt.Sscan(v, &defaultSpend); err != nil {
			return usageError("UNDERSTUDY_MAX_HOURLY_SPEND: want a number of USD per hour")
		}
	}
	fs.Float64Var(&cfg.MaxHourlySpend, "max-hourly-spend", defaultSpend, "USD per hour the machines held at once may cost together; a job waits queued for room, and fails budget_exceeded when its new machine would go over (0: no cap)")
	defaultGrace, err := time.ParseDuration(envOr("UNDERSTUDY_STOP_GRACE", "60s"))
	if err != nil {
		return usageError("UNDERSTUDY_STOP_GRACE: " + err.Error())
	}
	fs.DurationVar(&cfg.StopGrace, "stop-grace", defaultGrace, "how long a cancelled, timed-out or over-budget job's runtime has, after SIGTERM, to write a checkpoint and exit")
	defaultAttempts := 3
	if v := os.Getenv("UNDERSTUDY_MAX_ATTEMPTS"); v != "" {
		if _, err := fmt.Sscan(v, &defaultAttempts); err != nil {
			return usageError("UNDERSTUDY_MAX_ATTEMPTS: want a number of machines")
		}
	}
	fs.IntVar(&cfg.MaxAttempts, "max-attempts", defaultAttempts, "machines a job may run on: a machine its cloud takes away (preempted, lost) is replaced and training resumes from the last checkpoint, until this many were used")
	defaultCkpt, err := time.ParseDuration(envOr("UNDERSTUDY_CHECKPOINT_EVERY", "5m"))
	if err != nil {
		return usageError("UNDERSTUDY_CHECKPOINT_EVERY: " + err.Error())
	}
	fs.DurationVar(&cfg.CheckpointEvery, "checkpoint-every", defaultCkpt, "how often the runtime writes a checkpoint while it trains; each is copied into the weights store at once, for a replacement machine to resume from")
	fs.StringVar(&cfg.WebhookURL, "webhook-url", os.Getenv("UNDERSTUDY_WEBHOOK_URL"), "URL that gets a signed POST of the job's status document on every status change (docs/operations.md); needs --webhook-secret-file")
	fs.StringVar(&cfg.WebhookSecretFile, "webhook-secret-file", os.Getenv("UNDERSTUDY_WEBHOOK_SECRET_FILE"), "owner-only file holding the secret that signs webhook deliveries (HMAC-SHA256)")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", os.Getenv("UNDERSTUDY_METRICS_LISTEN"), "serve Prometheus /metrics on this separate address, without a token (default: on --listen, behind the API token)")
	defaultHubCheck := true
	if v := os.Getenv("UNDERSTUDY_HUB_CHECK"); v != "" {
		if defaultHubCheck, err = strconv.ParseBool(v); err != nil {
			return usageError("UNDERSTUDY_HUB_CHECK: want true or false")
		}
	}
	fs.BoolVar(&cfg.HubCheck, "hub-check", defaultHubCheck, "ask the Hugging Face Hub, before anything is made, whether a slm_type that is not a local path names a model there (off: only the machine finds out)")
	fs.StringVar(&cfg.HubEndpoint, "hub-endpoint", envOr("HF_ENDPOINT", hubcheck.DefaultEndpoint), "the Hub the check asks (default from $HF_ENDPOINT when set); the machines download from their own HF_ENDPOINT")
	if err := cfg.Limits.register(fs); err != nil {
		return usageError(err.Error())
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("serve takes no arguments")
	}
	if err := cfg.Validate(); err != nil {
		return usageError(err.Error())
	}
	var lvl slog.Level
	lvl.UnmarshalText([]byte(cfg.LogLevel))
	hopts := &slog.HandlerOptions{Level: lvl}
	var log *slog.Logger
	if cfg.LogFormat == "json" {
		log = slog.New(slog.NewJSONHandler(stderr, hopts))
	} else {
		log = slog.New(slog.NewTextHandler(stderr, hopts))
	}

	provs, err := loadProviders(envGetter)
	if err != nil {
		return fmt.Errorf("provider configuration: %w", err)
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("resolve data dir: %w", err)
	}
	// The job store. SQLite lives in the data dir, which one process holds. On PostgreSQL,
	// a replica stands by until it leads; only then does it take the data dir, which the
	// replicas share (the jobs' keys and dataset copies are there).
	var st store.Store
	var pg *postgres.Store
	if cfg.StoreURL == "" {
		release, err := prepareDataDir(dataDir, log)
		if err != nil {
			return err
		}
		defer release()
		sq, err := sqlite.Open(ctx, filepath.Join(dataDir, "jobs.db"))
		if err != nil {
			return err
		}
		st = sq
		defer sq.Close()
	} else {
		var err error
		if pg, err = postgres.Open(ctx, cfg.StoreURL); err != nil {
			return err
		}
		st = pg
		defer pg.Close()
	}

	// The API's listener. On a shared store it answers as a standby (api.Standby) until this
	// replica leads; otherwise it serves once the driver has started.
	var handler atomic.Pointer[http.Handler]
	var leaderURL atomic.Value // string: where the leader serves, while this replica stands by
	leaderURL.Store("")
	standby := api.Standby(func() string { return leaderURL.Load().(string) }, log)
	handler.Store(&standby)
	srv := api.NewHTTPServer(ctx, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*handler.Load()).ServeHTTP(w, r)
	}))
	defer srv.Close()
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	cfg.Listen = listening(cfg.Listen, ln.Addr())
	errc := make(chan error, 1)
	serving := false
	serve := func() {
		if !serving {
			serving = true
			go func() { errc <- srv.Serve(ln) }()
		}
	}
	// runCtx ends at a signal, or when this replica loses the lead of a shared store.
	runCtx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	host, _ := os.Hostname()
	owner := fmt.Sprintf("%s-%d", host, os.Getpid())

	if pg != nil {
		serve()
		fmt.Fprintf(stdout, "understudy-train on http://%s: waiting to lead the job store\n", ln.Addr())
		lease, err := pg.Lead(runCtx, postgres.LeadOptions{Holder: owner, URL: advertiseURL(cfg), Logger: log,
			Waiting: func(u string) { leaderURL.Store(u) }})
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopped while standing by
			}
			return err
		}
		// Released after the driver has stopped (deferred calls run last in, first out),
		// so that the next leader starts only once this one no longer drives jobs.
		defer lease.Release()
		go func() {
			select {
			case <-lease.Lost():
				stopRun(errLostLead)
			case <-runCtx.Done():
			}
		}()
		// The previous leader, if it shared this data dir, may still be stopping.
		release, err := prepareDataDirWaiting(runCtx, dataDir, log, time.Minute)
		if err != nil {
			return err
		}
		defer release()
	}

	token, err := apiToken(cfg.TokenFile, dataDir, log)
	if err != nil {
		return err
	}
	if cfg.WeightsURL == "" {
		cfg.WeightsURL = "file://" + filepath.Join(dataDir, "weights")
	}
	if cfg.PublicURL == "" {
		cfg.PublicURL = "http://" + cfg.Listen
	}

	weights, err := storage.OpenWeights(ctx, cfg.WeightsURL)
	if err != nil {
		return err
	}
	defer weights.Close()
	if tok, err := secret(envGetter, "PULUMI_ACCESS_TOKEN"); err == nil {
		provs.engineEnv["PULUMI_ACCESS_TOKEN"] = tok
	} else if !errors.Is(err, cloudapi.ErrNotSet) {
		return err
	}
	mgr, err := stacks.Open(ctx, stacks.Config{
		DataDir:    dataDir,
		BackendURL: cfg.BackendURL,
		PulumiBin:  cfg.PulumiBin,
		PluginBin:  cfg.PluginBin,
		Passphrase: os.Getenv("PULUMI_CONFIG_PASSPHRASE"),
		Env:        provs.engineEnv,
		Logger:     log,
	})
	if err != nil {
		return err
	}
	provs.installPlugins(ctx, mgr, envGetter("UNDERSTUDY_INSTALL_PLUGINS") != "false", log)
	runtime := trainer.FS()
	if cfg.RuntimeDir != "" {
		if st, err := os.Stat(filepath.Join(cfg.RuntimeDir, "launch.sh")); err != nil || st.IsDir() {
			return usageError("--runtime-dir " + cfg.RuntimeDir + " has no launch.sh")
		}
		runtime = os.DirFS(cfg.RuntimeDir)
		log.Warn("shipping a runtime from a directory instead of the embedded one", "dir", cfg.RuntimeDir)
	}
	local, err := configureLocal(ctx, cfg, dataDir, log)
	if err != nil {
		return err
	}
	provs.programs.Local = local.Config
	// A workers dir outside the data dir goes when the service does, if no worker is left
	// in it (one that is reattaches at the next start).
	defer os.Remove(local.Config.BaseDir)
	if local.NotReady != "" {
		provs.programs.NotConfigured["local"] = local.NotReady
		provs.status["local"] = "not configured: " + local.NotReady
	}
	prov := lifecycle.NewStackProvisioner(mgr, provs.programs)
	inventories := map[string]lifecycle.Inventory{}
	if provs.runpod != nil {
		inventories["runpod"] = lifecycle.NewRunPodInventory(provs.runpod)
	}
	if provs.lambda != nil {
		inventories["lambda"] = lifecycle.NewLambdaInventory(provs.lambda)
	}
	lease := cfg.MachineLease
	if lease == 0 {
		lease = -1 // off
	}
	for name, st := range provs.status {
		log.Info("provider", "provider", name, "status", st)
	}
	var hub lifecycle.HubChecker
	if cfg.HubCheck {
		hc, err := hubcheck.New(&hubcheck.Options{Endpoint: cfg.HubEndpoint})
		if err != nil {
			return usageError(err.Error())
		}
		hub = hc
		log.Info("hub check", "endpoint", hc.Endpoint())
	} else {
		log.Info("hub check off: Hugging Face ids are checked on the machines only")
	}
	mtr := metrics.New()
	observers := []lifecycle.Observer{mtr}
	var hooks *webhook.Notifier
	if cfg.WebhookURL != "" {
		secret, err := readSecretFile(cfg.WebhookSecretFile)
		if err != nil {
			return fmt.Errorf("webhook secret: %w", err)
		}
		hooks, err = webhook.New(webhook.Options{URL: cfg.WebhookURL, Secret: secret, Render: api.StatusDocument,
			Logger: log, Report: mtr.WebhookDelivery})
		if err != nil {
			return err
		}
		observers = append(observers, hooks)
		defer func() {
			// Drain briefly: a delivery still queued at exit is lost (the receiver reads
			// GET status for the truth).
			hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := hooks.Close(hctx); err != nil {
				log.Warn("webhook deliveries left unsent at shutdown", "err", err)
			}
		}()
	}
	drv, err := lifecycle.New(lifecycle.Config{
		DataDir:            dataDir,
		Owner:              owner,
		MaxConcurrent:      cfg.MaxConcurrent,
		Runtime:            runtime,
		WeightsURL:         weights.BaseURI,
		Weights:            weights.Bucket,
		CallbackURL:        cfg.PublicURL,
		Python:             map[string]string{"local": cfg.LocalPython},
		RuntimeCache:       map[string]string{"local": local.RuntimeCache},
		MachineLease:       lease,
		DatasetRoots:       cfg.Limits.DatasetRoots,
		ModelRoots:         cfg.Limits.ModelRoots,
		Hub:                hub,
		DatasetLimits:      dataset.Limits{MaxBytes: cfg.Limits.MaxDatasetBytes, MaxRecords: cfg.Limits.MaxDatasetRecords},
		MaxQueued:          cfg.Limits.MaxQueued,
		DefaultMaxDuration: cfg.Limits.DefaultMaxDuration,
		Inventories:        inventories,

		MaxHourlySpend: cfg.MaxHourlySpend,
		StopGrace:      cfg.StopGrace,

		MaxAttempts:     cfg.MaxAttempts,
		CheckpointEvery: cfg.CheckpointEvery,

		Observers: observers,
	}, st, prov, lifecycle.NewSSHConnector(weights.Bucket, log), log)
	if err != nil {
		return err
	}

	apiOpts := api.Options{Token: token, Providers: programs.Names(), ProviderStatus: provs.status, Logger: log,
		MaxPairs: cfg.Limits.MaxPairs, MaxStreams: cfg.Limits.MaxStreams, SpoolDir: drv.UploadDir(), Sessions: st}
	var metricsSrv *http.Server
	if cfg.MetricsListen == "" {
		// On the API's listener the metrics need the API token, as every other read does.
		apiOpts.Metrics = mtr.Handler()
	} else {
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("listen for metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET "+metrics.Path, mtr.Handler())
		metricsSrv = api.NewHTTPServer(ctx, mux)
		defer metricsSrv.Close()
		go metricsSrv.Serve(mln)
		log.Info("serving metrics", "listen", mln.Addr().String())
		fmt.Fprintf(stdout, "understudy-train metrics on http://%s%s\n", mln.Addr(), metrics.Path)
	}
	if err := drv.Start(runCtx); err != nil {
		return err
	}
	apiHandler := http.Handler(api.New(drv, apiOpts))
	handler.Store(&apiHandler)
	serve()
	log.Info("serving", "listen", ln.Addr().String(), "data_dir", dataDir, "weights", weights.BaseURI, "store", storeName(cfg.StoreURL))
	fmt.Fprintf(stdout, "understudy-train serving on http://%s (data in %s)\n", ln.Addr(), dataDir)

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-runCtx.Done():
	}
	lost := errors.Is(context.Cause(runCtx), errLostLead)
	if lost {
		log.Error("lost the lead of the job store: stopping without tearing anything down; the new leader resumes the jobs")
	}
	// First signal drains: stop taking requests, stop following jobs (their machines keep
	// running; the next start reattaches). A second signal aborts (the default handler).
	log.Info("shutting down; running jobs resume at the next start")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if metricsSrv != nil {
		metricsSrv.Shutdown(sctx)
	}
	err = drv.Stop(sctx)
	if cerr := mgr.Close(sctx); err == nil {
		err = cerr
	}
	if lost {
		return errLostLead
	}
	return err
}

// listening is the listen address with the port the listener has: port 0 picks a free
// one, and the defaults derived from the listen address (the public and advertised URLs)
// must name the one picked, as the lines on stdout do. The host is kept as given (a name,
// or a wildcard that the advertised URL refuses).
func listening(listen string, got net.Addr) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port != "0" {
		return listen
	}
	_, picked, err := net.SplitHostPort(got.String())
	if err != nil {
		return listen
	}
	return net.JoinHostPort(host, picked)
}

// errLostLead ends serve when this replica lost the lead of the shared job store: its
// database session ended, and a standby may already lead.
var errLostLead = errors.New("lost the lead of the job store (its database session ended); restart to stand by")

// advertiseURL is where the other replicas reach this one: --advertise-url, else the
// listen address unless its host is a wildcard ("": they answer 503 instead of passing
// requests on).
func advertiseURL(cfg Config) string {
	if cfg.AdvertiseURL != "" {
		return strings.TrimSuffix(cfg.AdvertiseURL, "/")
	}
	host, _, err := net.SplitHostPort(cfg.Listen)
	if ip := net.ParseIP(host); err != nil || host == "" || ip != nil && ip.IsUnspecified() {
		return ""
	}
	return "http://" + cfg.Listen
}

// storeName names the job store for logs, without secrets.
func storeName(storeURL string) string {
	if storeURL == "" {
		return "sqlite"
	}
	u, err := url.Parse(storeURL)
	if err != nil {
		return "postgres"
	}
	return "postgres://" + u.Host + u.Path
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
