// Command understudy-train is the Understudy Training Service: `serve` runs the REST API
// and the job driver; the other subcommands are its client.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal cancels ctx and the service drains; restoring the default handling
	// then lets a second signal end the process at once.
	go func() {
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "understudy-train:", err)
		}
		os.Exit(exitCode(err))
	}
}

const usage = `usage: understudy-train <command> [flags]

commands:
  serve     run the service (REST API and job driver)
  start     submit a training job
  status    show a job
  cancel    cancel a job
  logs      stream a job's log and progress until it ends
  list      list jobs
  stacks    list the Pulumi stacks and the jobs that own them
  stacks gc list machines at the clouds that no stack owns (--yes: terminate them)
  version   print the version

Client commands read UNDERSTUDY_URL (default http://127.0.0.1:8080) and
UNDERSTUDY_API_TOKEN (or --token-file). Run "understudy-train <command> -h" for flags.
`

// Version is set at build time.
var Version = "dev"

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serve(ctx, rest, stdout, stderr)
	case "start":
		return clientStart(ctx, rest, stdout, stderr)
	case "status":
		return clientStatus(ctx, rest, stdout, stderr)
	case "cancel":
		return clientCancel(ctx, rest, stdout, stderr)
	case "logs":
		return clientLogs(ctx, rest, stdout, stderr)
	case "list":
		return clientList(ctx, rest, stdout, stderr)
	case "stacks":
		return clientStacks(ctx, rest, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, Version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return usageError("unknown command " + cmd)
}

type usageError string

func (e usageError) Error() string { return string(e) }

// jobFailed is returned by client commands that waited for a job that did not complete.
type jobFailed string

func (e jobFailed) Error() string { return string(e) }

func exitCode(err error) int {
	var u usageError
	var jf jobFailed
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0 // asked for help, and got it
	case errors.As(err, &u):
		return 2
	case errors.As(err, &jf):
		return 3
	}
	return 1
}
