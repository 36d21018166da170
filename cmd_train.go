package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"train/collective"
	"train/config"
	"train/trainer"
)

// loadRunConfig builds the effective configuration of a training run: the defaults,
// then the -config file, then every flag given. It returns flag.ErrHelp for -h.
func loadRunConfig(args []string, stderr io.Writer) (cfg config.Config, launch *collective.Flags, printConfig bool, err error) {
	cfg = config.Default()
	if path := config.ConfigPath(args); path != "" {
		if cfg, err = config.Load(path); err != nil {
			return cfg, nil, false, err
		}
	}
	fs := newFlagSet("train", `Usage: train [-config run.toml] [flags]

Fine-tunes a Llama-family model. With no flags it runs the embedded default: a tiny
random Llama learning a generated task on the CPU. Flags override the config file;
"train -print-config" prints the effective configuration as TOML to start a file from.`, stderr)
	fs.String("config", "", "TOML configuration file (see README.md, Config reference)")
	fs.BoolVar(&printConfig, "print-config", false, "print the effective configuration as TOML and exit")
	config.BindFlags(fs, &cfg)
	launch = collective.AddFlags(fs)
	if err := parseFlags(fs, config.ResumeArgs(args)); err != nil {
		return cfg, nil, false, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, nil, false, fmt.Errorf("%w (from flags or -config)", err)
	}
	// An empty run_dir stays empty: the trainer picks the default's next
	// free name (or, with -resume, its newest run) on rank 0 for every rank.
	return cfg, launch, printConfig, nil
}

// runTrain is the default subcommand.
func runTrain(args []string, stdout, stderr io.Writer) error {
	cfg, launch, printConfig, err := loadRunConfig(args, stderr)
	if err != nil {
		return err
	}
	if printConfig {
		cfg.RunDir = cfg.RunDirOrDefault()
		out, err := cfg.Encode()
		if err != nil {
			return err
		}
		_, err = stdout.Write(out)
		return err
	}
	// SIGINT, SIGTERM or SIGUSR1 (Slurm's --signal=USR1@120 before a time
	// limit or preemption) stops the run after the current step with a
	// checkpoint and exit status 0; a second signal ends the process at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGUSR1)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // restore the default action: a second signal ends the process
	}()
	_, err = trainer.Run(ctx, cfg, launch, stdout, stderr)
	return err
}
