// Package bench holds the benchmarks of `train bench`, each measured against a
// peer in the same run, so that a ratio compares two moments of the same
// machine rather than two machines or two days:
//
//   - Model times training steps (forward, backward and, for LoRA, the AdamW
//     update) of one model on one device and prints tokens/s, step time,
//     TFLOP/s and peak memory. The peer is PyTorch: scripts/bench-peer.py
//     prints the same JSON keys, and scripts/gpu-check.sh runs both side by
//     side.
//   - Ckpt times saving and loading one rank's checkpoint and reports the
//     stored size, for zstd with byte grouping (what training writes) against
//     its peers, no compression and plain zstd.
//   - Collective times the ring all-reduce over TCP across the job against a
//     raw TCP stream over loopback (one socket, no reduction), re-measured
//     after each size.
//
// The options are plain values, already checked by the command line; what the
// benchmarks print is the command's output.
package bench
