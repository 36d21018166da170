package ckpt

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Retention says which complete checkpoints Commit keeps: the newest KeepLast
// and every step that is a multiple of KeepEvery. The newest complete
// checkpoint is always kept. The zero value keeps everything.
type Retention struct {
	KeepLast  int // 0 = keep all
	KeepEvery int // 0 = no periodic keep
}

// PrepareDir creates (if needed) the temporary directory every rank writes its
// shard of step into, and returns it. It is safe for all ranks to call at once.
func PrepareDir(runDir string, step int64) (string, error) {
	if step < 0 {
		return "", fmt.Errorf("ckpt: negative step %d", step)
	}
	dir := TmpDir(runDir, step)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("ckpt: %w", err)
	}
	return dir, nil
}

// Commit is rank 0's half of the commit protocol, called after every rank has
// closed its ShardWriter in TmpDir(runDir, step) and a barrier:
//
//  1. read the ranks' indexes (ranks 0..m.WorldSize-1 must all be there) and
//     check every shard's size; write manifest.json into the tmp dir, fsync
//     it and the directory;
//  2. rename step-N.tmp to step-N (an older step-N without DONE, from a crash,
//     or a complete one being redone, is first moved aside) and fsync
//     checkpoints/;
//  3. write DONE (the manifest's size and CRC-32C), fsync it and step-N/:
//     from here the checkpoint is complete;
//  4. point checkpoints/latest at step-N (temp file + rename);
//  5. apply keep, and remove stale tmp dirs and half-finished ones older than step N.
//
// m carries the trainer's descriptive fields; Commit sets Version, Step,
// Created, Files and Entries. It returns the committed directory.
func Commit(runDir string, step int64, m Manifest, keep Retention) (string, error) {
	tmp := TmpDir(runDir, step)
	final := StepDir(runDir, step)
	indexes, err := readIndexes(tmp, m.WorldSize)
	if err != nil {
		return "", err
	}
	m.Version = Version
	m.Step = step
	if m.Created == "" {
		m.Created = time.Now().UTC().Format(time.RFC3339)
	}
	m.WorldSize = len(indexes)
	m.Files = nil
	m.Entries = nil
	for _, idx := range indexes {
		m.Files = append(m.Files, idx.File)
		m.Entries = append(m.Entries, idx.Entries...)
	}
	if m.Entries == nil {
		m.Entries = []Entry{}
	}
	if err := m.validate(); err != nil {
		return "", fmt.Errorf("ckpt: %s: %v", tmp, err)
	}
	b, err := marshal(&m)
	if err != nil {
		return "", fmt.Errorf("ckpt: manifest: %w", err)
	}
	mpath := filepath.Join(tmp, ManifestName)
	if err := writeFileSync(mpath, b); err != nil {
		return "", fmt.Errorf("ckpt: write %s: %w", mpath, err)
	}
	if err := syncDir(tmp); err != nil {
		return "", fmt.Errorf("ckpt: %w", err)
	}

	if _, err := os.Stat(final); err == nil {
		if err := trash(final); err != nil {
			return "", err
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("ckpt: commit: %w", err)
	}
	if err := syncDir(Dir(runDir)); err != nil {
		return "", fmt.Errorf("ckpt: %w", err)
	}
	db, _ := marshal(done{Step: step, ManifestSize: int64(len(b)), ManifestCRC32C: checksum(b)})
	dpath := filepath.Join(final, DoneName)
	if err := writeFileAtomic(dpath, db); err != nil { // temp + rename: DONE is absent or whole
		return "", fmt.Errorf("ckpt: write %s: %w", dpath, err)
	}
	lpath := filepath.Join(Dir(runDir), LatestName)
	if err := writeFileAtomic(lpath, []byte(StepDirName(step)+"\n")); err != nil {
		return "", fmt.Errorf("ckpt: write %s: %w", lpath, err)
	}
	if err := Prune(runDir, keep); err != nil {
		return final, err
	}
	return final, nil
}

// readIndexes reads the rank indexes in a tmp dir and checks the shard sizes.
func readIndexes(tmp string, worldSize int) ([]rankIndex, error) {
	if worldSize <= 0 {
		return nil, fmt.Errorf("ckpt: commit %s: world size %d", tmp, worldSize)
	}
	out := make([]rankIndex, 0, worldSize)
	for rank := 0; rank < worldSize; rank++ {
		path := filepath.Join(tmp, IndexName(rank))
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("ckpt: commit: %s missing: rank %d of %d did not close its shard writer", path, rank, worldSize)
		}
		if err != nil {
			return nil, fmt.Errorf("ckpt: commit: %w", err)
		}
		var idx rankIndex
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, fmt.Errorf("ckpt: commit: %s: %v", path, err)
		}
		if idx.Version != Version || idx.Rank != rank || idx.File.Name != ShardName(rank) {
			return nil, fmt.Errorf("ckpt: commit: %s: version %d rank %d file %q, want version %d rank %d file %q",
				path, idx.Version, idx.Rank, idx.File.Name, Version, rank, ShardName(rank))
		}
		spath := filepath.Join(tmp, idx.File.Name)
		st, err := os.Stat(spath)
		if err != nil {
			return nil, fmt.Errorf("ckpt: commit: %w", err)
		}
		if st.Size() != idx.File.Size {
			return nil, fmt.Errorf("ckpt: commit: %s: %d bytes, its index says %d", spath, st.Size(), idx.File.Size)
		}
		out = append(out, idx)
	}
	return out, nil
}

// trash moves a directory out of the way (atomically) and removes it. A
// crash between the two leaves a *.trash dir that Prune removes later.
func trash(dir string) error {
	t := fmt.Sprintf("%s.%d.trash", dir, time.Now().UnixNano())
	if err := os.Rename(dir, t); err != nil {
		return fmt.Errorf("ckpt: %w", err)
	}
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.RemoveAll(t); err != nil {
		return fmt.Errorf("ckpt: %w", err)
	}
	return nil
}

// Status of a checkpoint directory.
type Status string

const (
	Complete   Status = "complete"
	Incomplete Status = "incomplete" // no DONE marker: a commit that did not finish
	Temporary  Status = "tmp"        // step-N.tmp: shards being written
	Corrupt    Status = "corrupt"    // DONE present, but the cheap check failed
)

// Info describes one checkpoint directory of a run.
type Info struct {
	Step   int64
	Dir    string
	Size   int64 // bytes on disk (files directly in Dir)
	Status Status
	Reason string // why it is not complete
	Latest bool   // the newest complete checkpoint
	Err    error  // the check's error, for Corrupt and Incomplete
}

// List returns every step-N and step-N.tmp directory of runDir with its
// status (cheap check: DONE, manifest checksum, file sizes), sorted by step;
// the newest complete one is marked Latest. A run without checkpoints gives
// an empty list.
func List(runDir string) ([]Info, error) {
	dir := Dir(runDir)
	des, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	var out []Info
	for _, de := range des {
		if !de.IsDir() {
			continue
		}
		name := de.Name()
		path := filepath.Join(dir, name)
		in := Info{Dir: path, Size: dirSize(path)}
		if step, ok := parseStepName(name, ""); ok && !strings.Contains(name, ".") {
			in.Step = step
			if _, err := loadChecked(path); err != nil {
				in.Status, in.Err = Corrupt, err
				if errors.Is(err, ErrIncomplete) {
					in.Status = Incomplete
				}
				in.Reason = strings.TrimPrefix(strings.TrimPrefix(err.Error(), "ckpt: "), path+": ")
				for _, e := range []error{ErrIncomplete, ErrCorrupt} {
					in.Reason = strings.TrimPrefix(in.Reason, e.Error()+": ")
				}
			} else {
				in.Status = Complete
			}
		} else if step, ok := parseStepName(name, ".tmp"); ok {
			in.Step, in.Status, in.Reason = step, Temporary, "shards being written, or left by a crash"
		} else {
			continue
		}
		out = append(out, in)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Step != out[j].Step {
			return out[i].Step < out[j].Step
		}
		return out[i].Status != Temporary && out[j].Status == Temporary
	})
	for i := len(out) - 1; i >= 0; i-- {
		if out[i].Status == Complete {
			out[i].Latest = true
			break
		}
	}
	return out, nil
}

func dirSize(dir string) int64 {
	var n int64
	des, _ := os.ReadDir(dir)
	for _, de := range des {
		if fi, err := de.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}

// Latest returns the newest complete checkpoint of runDir (DONE present,
// manifest checksum and shard sizes right), or an error wrapping
// ErrNoCheckpoint. The checkpoints/latest pointer is for people and tools;
// Latest scans the directories and trusts none of them without the check.
func Latest(runDir string) (Info, error) {
	infos, err := List(runDir)
	if err != nil {
		return Info{}, err
	}
	for i := len(infos) - 1; i >= 0; i-- {
		if infos[i].Latest {
			return infos[i], nil
		}
	}
	return Info{}, fmt.Errorf("ckpt: %s: %w", Dir(runDir), ErrNoCheckpoint)
}

// Prune applies keep to runDir's checkpoints and removes leftovers of crashes
// older than the newest complete checkpoint (step-N.tmp, step-N without DONE,
// *.trash). It never removes the newest complete checkpoint, nor anything
// newer than it, nor corrupt ones (left for inspection).
func Prune(runDir string, keep Retention) error {
	infos, err := List(runDir)
	if err != nil {
		return err
	}
	newest := int64(-1)
	var complete []Info
	for _, in := range infos {
		if in.Status == Complete {
			complete = append(complete, in)
			newest = in.Step
		}
	}
	if newest < 0 {
		return nil
	}
	var firstErr error
	remove := func(dir string) {
		if err := trash(dir); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	for i, in := range complete {
		if in.Step == newest || keep.KeepLast <= 0 || i >= len(complete)-keep.KeepLast ||
			(keep.KeepEvery > 0 && in.Step%int64(keep.KeepEvery) == 0) {
			continue
		}
		remove(in.Dir)
	}
	for _, in := range infos {
		if in.Step < newest && (in.Status == Temporary || in.Status == Incomplete) {
			remove(in.Dir)
		}
	}
	des, _ := os.ReadDir(Dir(runDir))
	for _, de := range des {
		if de.IsDir() && strings.HasSuffix(de.Name(), ".trash") {
			if err := os.RemoveAll(filepath.Join(Dir(runDir), de.Name())); err != nil && firstErr == nil {
				firstErr = fmt.Errorf("ckpt: %w", err)
			}
		}
	}
	return firstErr
}
