// Command understudy-fakecloud serves a faithful imitation of one cloud GPU API (RunPod or
// Lambda Cloud) on loopback, for tests; its machines are real local OpenSSH sshd's. See
// package internal/fakecloud for what it imitates and what it simplifies.
//
// It prints one JSON line on stdout once it serves — {"provider","url","dir","pid"}, url
// being the base URL to configure the provider's client with — then logs to stderr. The
// first SIGTERM or SIGINT terminates every machine and exits 0; a second one aborts.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/understudy-ai/training-service/internal/fakecloud"
)

// shutdownTimeout bounds the teardown of the machines after a signal.
const shutdownTimeout = 60 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal takes the default action: abort
	}()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var usage usageError
	switch {
	case errors.As(err, &usage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintf(os.Stderr, "understudy-fakecloud: %v\n", err)
		os.Exit(1)
	}
}

// usageError is a bad command line; it exits 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// options is the parsed command line.
type options struct {
	cfg    fakecloud.Config
	listen string
}

func parseArgs(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("understudy-fakecloud", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var provider string
	fs.StringVar(&provider, "provider", "", "the API to imitate: runpod or lambda (required)")
	fs.StringVar(&o.cfg.Dir, "dir", "", "the fake's directory; machines live in DIR/machines (required)")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:0", "loopback address to serve the API on")
	fs.DurationVar(&o.cfg.BootDelay, "boot-delay", fakecloud.DefaultBootDelay, "time from create to running")
	fs.StringVar(&o.cfg.APIKey, "api-key", "", "the API key requests must carry (default: $FAKECLOUD_API_KEY, else "+fakecloud.DefaultAPIKey+")")
	fs.Func("fault", "a fault to imitate, repeatable: "+strings.Join(fakecloud.FaultNames, ", "), o.cfg.Faults.Set)
	fs.IntVar(&o.cfg.SSHPort, "ssh-port", fakecloud.DefaultSSHPort, "lambda: the port of every instance's sshd, on the instance's own loopback address")
	fs.DurationVar(&o.cfg.LaunchInterval, "launch-interval", fakecloud.DefaultLaunchInterval, "lambda: least time between two accepted launches")
	fs.DurationVar(&o.cfg.SlowDelete, "slow-delete", fakecloud.DefaultSlowDelete, "how long a deleted machine stays up under --fault slow-delete")
	if err := fs.Parse(args); err != nil {
		return o, usageError{err}
	}
	if fs.NArg() > 0 {
		return o, usage(fs, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " ")))
	}
	o.cfg.Provider = fakecloud.Provider(provider)
	if o.cfg.APIKey == "" {
		o.cfg.APIKey = os.Getenv("FAKECLOUD_API_KEY") // empty: the package default
	}
	sshPortSet := false
	fs.Visit(func(f *flag.Flag) { sshPortSet = sshPortSet || f.Name == "ssh-port" })
	if sshPortSet && o.cfg.Provider == fakecloud.RunPod {
		return o, usage(fs, errors.New("--ssh-port applies to --provider lambda only"))
	}
	if err := o.cfg.Validate(); err != nil {
		return o, usage(fs, err)
	}
	if err := checkLoopback(o.listen); err != nil {
		return o, usage(fs, err)
	}
	return o, nil
}

// usage reports err and the flags, and makes err a usageError.
func usage(fs *flag.FlagSet, err error) error {
	fmt.Fprintf(fs.Output(), "understudy-fakecloud: %v\n", err)
	fs.Usage()
	return usageError{err}
}

// checkLoopback refuses to serve beyond this host: the fake's machines log in as its user.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("listen: %q is not a loopback address", addr)
	}
	return nil
}

// announcement is the one line printed on stdout once the fake serves.
type announcement struct {
	Provider string `json:"provider"`
	URL      string `json:"url"`
	Dir      string `json:"dir"`
	PID      int    `json:"pid"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseArgs(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	o.cfg.Logger = log
	srv, err := fakecloud.New(o.cfg)
	if err != nil {
		return err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", o.listen)
	if err != nil {
		return errors.Join(fmt.Errorf("listen: %w", err), srv.Close(ctx))
	}
	httpSrv := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- httpSrv.Serve(ln) }()
	line, _ := json.Marshal(announcement{
		Provider: string(o.cfg.Provider), URL: srv.BaseURL("http://" + ln.Addr().String()),
		Dir: srv.Dir(), PID: os.Getpid(),
	})
	if _, err := fmt.Fprintf(stdout, "%s\n", line); err != nil {
		err = fmt.Errorf("announce: %w", err)
		return errors.Join(err, shutdown(ctx, httpSrv, srv))
	}
	log.Info("serve fake cloud", "provider", string(o.cfg.Provider), "addr", ln.Addr().String(), "dir", srv.Dir())
	select {
	case <-ctx.Done():
		log.Info("terminate machines and stop")
		return shutdown(ctx, httpSrv, srv)
	case err := <-served:
		return errors.Join(fmt.Errorf("serve: %w", err), shutdown(ctx, httpSrv, srv))
	}
}

// shutdown stops serving, then terminates every machine, under its own timeout.
func shutdown(ctx context.Context, httpSrv *http.Server, srv *fakecloud.Server) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	var errs []error
	if err := httpSrv.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stop serving: %w", err))
	}
	if err := srv.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("terminate machines: %w", err))
	}
	return errors.Join(errs...)
}
