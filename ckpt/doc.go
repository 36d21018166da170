// Package ckpt stores training checkpoints: sharded (one file per rank),
// zstd-compressed with byte grouping, checksummed, committed atomically, and
// readable back by logical tensor name and element range, so a run can resume
// on a different world size, pipeline split or ZeRO layout.
//
// # Layout on disk
//
//	RUN/checkpoints/
//	    latest                  "step-00000200\n": the last commit (a hint; Latest scans)
//	    step-00000100/          a committed checkpoint
//	        rank-00000.ckpt     rank 0's shard file
//	        rank-00000.index.json  rank 0's entries (what Commit gathers)
//	        rank-00001.ckpt ...
//	        manifest.json       written by rank 0 at commit
//	        DONE                written last: {"step", "manifest_size", "manifest_crc32c"}
//	    step-00000200.tmp/      shards of a checkpoint being written (or left by a crash)
//
// A shard file is a 16-byte magic ("train-ckpt v1\n\0\0") followed by entry
// payloads back to back. It has no internal index: the manifest says where
// everything is.
//
// # Manifest
//
// manifest.json (format Version 1) holds the step, the trainer's config TOML,
// its parallel plan (a JSON string), the model and tokenizer sources, the world
// size, every shard file (name, rank, size, CRC-32C of the whole file) and
// every entry. An entry is a contiguous piece of one logical tensor: name,
// dtype (f32, bf16 or bytes), the logical shape of the whole tensor, the
// element range [start, start+count) of its row-major flattening that the
// entry holds, file, offset, stored length, raw length, CRC-32C (Castagnoli)
// of the raw little-endian bytes, and the compression kind:
//
//	none            raw little-endian bytes
//	zstd            one zstd frame of the raw bytes
//	zstd+bytegroup  the byte planes (every element's byte 0, then every
//	                byte 1, ...), each plane its own zstd frame, frames back
//	                to back: fp32 and bf16 sign/exponent bytes compress far
//	                better apart from their mantissa bytes, and a frame per
//	                plane gives each plane its own entropy tables
//
// A writer cuts large tensors into entries of Options.ChunkBytes raw bytes
// (4 MiB by default), compressed in parallel; an entry that does not shrink is
// stored raw. A tensor's pieces may be in several files (a ZeRO-1 shard, a
// pipeline stage's layers); Reader.ReadF32 assembles any range from whichever
// entries cover it and says which elements are missing otherwise. Non-tensor
// state (RNG, data-reader position, optimizer step) is stored as bytes entries
// under names such as "rank/00003/state.json".
//
// # Commit protocol
//
// The trainer supplies the barrier between ranks:
//
//	dir, _ := ckpt.PrepareDir(run, step)          // every rank (idempotent)
//	w, _ := ckpt.NewShardWriter(dir, rank, opts)  // every rank
//	w.AddF32(...); w.AddBytes(...)
//	w.Close()                                     // fsyncs the shard, writes the rank's index
//	barrier()
//	if rank == 0 { ckpt.Commit(run, step, manifest, keep) }
//
// Commit writes manifest.json and fsyncs it, renames step-N.tmp to step-N and
// fsyncs checkpoints/, writes DONE and fsyncs it, then replaces the latest
// pointer (temp file + rename) and applies the retention policy. Only a
// directory named step-N with a DONE marker that pins the manifest's size and
// checksum, and shard files of the sizes the manifest records, is complete.
// A crash at any moment therefore leaves the previous complete checkpoint or
// the new one as the newest complete checkpoint; a half-written one is
// "incomplete" (no DONE) or "tmp" and never loads. Latest returns the newest
// complete checkpoint after that cheap check; Verify additionally checks
// every file's and entry's checksum.
//
// Removal goes through a rename to *.trash first, so a crash during deletion
// leaves nothing that looks like a checkpoint half-deleted.
package ckpt
