// Package trainer is one rank's training run as a library: Run joins the ranks
// the launcher started, plans the run (shard), loads this rank's stage and
// trains it; the command line (package main) only parses flags into a
// config.Config and calls Run.
//
// One step, in the order the code runs it (loop.go):
//
//	t.nextRows              the step's micro-batches, laid out alike on every rank, read from the token cache only by the replica that runs them (data.Packer, data.Cache)
//	t.runPipeline           this rank's 1F1B action list (shard.Plan.Actions), pipeline.go:
//	  m.Forward               embedding on the first stage, this stage's layers, loss on the last
//	  stageWire.sendAsync     activations to the next stage, gradients to the previous one
//	  m.Backward              the layers' backward, in 1F1B order
//	t.opt.reduce            gradients summed across replicas (optimizer.go, devopt.go)
//	World.AllReduce         the loss, the squared gradient norm and the stop/save votes, once
//	optim.ClipScale         global-norm clipping
//	t.opt.update            AdamW on this rank's tensors (ZeRO-1: its shard, then an all-gather)
//	t.saveCheckpoint        every ckpt.every steps, on a signal and at the end (checkpoint.go)
//
// Where the optimizer runs is one interface (optimizer): on the host over
// flatParams and the TCP collectives for every layout, or on the GPU with NCCL
// for one stage without ZeRO-1. The loop does not know which.
//
// A run writes into its run directory (outputs.go): config.toml, plan.txt,
// metrics.jsonl, logs/rank-NNNNN.jsonl (ranklog.go), checkpoints/ (ckpt) and
// what was trained (adapter/ or model/). Progress goes to stderr (progress.go).
// Which directory, and which checkpoint a resumed run restores, rank 0 decides
// before anything is written (rundir.go): a directory holds one run.
package trainer
