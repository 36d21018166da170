package ckpt

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzManifest writes fuzzed manifest.json bytes (and, when done is non-empty,
// fuzzed DONE bytes; else a DONE that pins the manifest, so that parsing and
// validation are reached) beside the shard files of a real checkpoint, then
// opens, reads every entry of and verifies it: errors, never a panic, a hang or
// an allocation sized by a field nobody checked (huge shapes, raw lengths,
// offsets, file names outside the directory).
func FuzzManifest(f *testing.F) {
	base := filepath.Join(f.TempDir(), "run")
	dir, err := writeStep(base, 3, 2, Options{Compress: true}, Retention{})
	if err != nil {
		f.Fatal(err)
	}
	good, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, []byte(nil))
	var m Manifest
	if err := json.Unmarshal(good, &m); err != nil {
		f.Fatal(err)
	}
	for _, edit := range []func(m *Manifest){
		func(m *Manifest) { m.Files[0].Name = "../x" },
		func(m *Manifest) { m.Files[0].Name = ".." },
		func(m *Manifest) { m.Entries[0].File = "../" + m.Entries[0].File },
		func(m *Manifest) {
			m.Entries[0].Shape = []int{1 << 40}
			m.Entries[0].Count = 1 << 40
			m.Entries[0].RawLength = 4 << 40
		},
		func(m *Manifest) { m.Entries[0].Offset = -1 },
		func(m *Manifest) { m.Entries[0].Shape = []int{-1, -1} },
	} {
		mm := m
		mm.Files = append([]File(nil), m.Files...)
		mm.Entries = append([]Entry(nil), m.Entries...)
		edit(&mm)
		b, _ := json.Marshal(&mm)
		f.Add(b, []byte(nil))
	}
	f.Add([]byte(`{"version":1,"files":[{"name":"rank-00000.ckpt","size":1e300}]}`), []byte(nil))
	f.Add([]byte(`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`), []byte(nil))
	f.Add(good, []byte(`{"step":3,"manifest_size":-1}`))
	f.Fuzz(func(t *testing.T, manifest, doneRaw []byte) {
		dir := filepath.Join(t.TempDir(), StepDirName(3))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, fl := range m.Files {
			if err := os.Link(filepath.Join(base, "checkpoints", StepDirName(3), fl.Name), filepath.Join(dir, fl.Name)); err != nil {
				t.Fatal(err)
			}
		}
		if len(doneRaw) == 0 {
			doneRaw, _ = marshal(done{Step: 3, ManifestSize: int64(len(manifest)), ManifestCRC32C: checksum(manifest)})
		}
		if err := os.WriteFile(filepath.Join(dir, ManifestName), manifest, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, DoneName), doneRaw, 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := Open(dir)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrIncomplete) {
				t.Fatalf("Open refused for an unclassified reason: %v", err)
			}
			return
		}
		defer r.Close()
		for _, fl := range r.Manifest().Files {
			if fl.Name != filepath.Base(fl.Name) || fl.Name == ".." || fl.Name == "." {
				t.Fatalf("accepted file name %q outside the directory", fl.Name)
			}
		}
		for _, name := range r.Names() {
			info, _ := r.Lookup(name)
			if info.DType == Bytes {
				r.ReadBytes(name)
				continue
			}
			n, err := numElems(info.Shape)
			if err != nil || n > 1<<16 {
				continue // the caller sizes dst from its own model, never from the manifest
			}
			r.ReadF32(name, 0, n, make([]float32, n))
		}
		Verify(dir)
	})
}

// TestHostileLengths: a self-consistent manifest whose compressed entries
// claim a terabyte of raw data (or a bytes blob of a terabyte) is refused as
// corrupt when read, without allocating what it claims.
func TestHostileLengths(t *testing.T) {
	dir := damage(t, func(dir string) {
		rewriteManifest(t, dir, func(m *Manifest) {
			for i := range m.Entries {
				e := &m.Entries[i]
				if e.Compression == CompNone {
					continue
				}
				es := int64(elemSize(e.DType))
				e.Shape, e.Start, e.Count = []int{1 << 40}, 0, 1<<40
				e.RawLength = e.Count * es
			}
		})
	})
	r, err := Open(dir)
	if err != nil {
		t.Fatalf("Open: %v (the lie only shows when the data is read)", err)
	}
	defer r.Close()
	for _, name := range r.Names() {
		if info, _ := r.Lookup(name); info.DType == Bytes && info.Shape[0] == 1<<40 {
			if _, err := r.ReadBytes(name); !errors.Is(err, ErrCorrupt) {
				t.Errorf("ReadBytes(%s): %v, want a corrupt-checkpoint error", name, err)
			}
		}
	}
	rep, err := Verify(dir)
	if !errors.Is(err, ErrCorrupt) || len(rep.Problems) == 0 {
		t.Errorf("Verify: %v, want a corrupt-checkpoint error", err)
	}
}

// TestPathSafety: a manifest cannot name a file outside its directory, a
// symlink inside a checkpoint is not followed (Open refuses it), and a step
// directory that is a symlink is ignored by List and Latest.
func TestPathSafety(t *testing.T) {
	for _, name := range []string{"../x", "..", ".", "a/../../x", "/etc/passwd"} {
		dir := damage(t, func(dir string) {
			rewriteManifest(t, dir, func(m *Manifest) {
				old := m.Files[0].Name
				m.Files[0].Name = name
				for i := range m.Entries {
					if m.Entries[i].File == old {
						m.Entries[i].File = name
					}
				}
			})
		})
		if r, err := Open(dir); err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "bad file name") {
			if r != nil {
				r.Close()
			}
			t.Errorf("file name %q: Open gave %v, want a refusal", name, err)
		}
	}

	// A shard, DONE or manifest that is a symlink (here to an identical copy
	// outside the directory) is refused.
	for _, which := range []string{ShardName(1), DoneName, ManifestName} {
		dir := damage(t, func(dir string) {
			outside := filepath.Join(t.TempDir(), "outside")
			b, err := os.ReadFile(filepath.Join(dir, which))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(outside, b, 0o644)
			os.Remove(filepath.Join(dir, which))
			if err := os.Symlink(outside, filepath.Join(dir, which)); err != nil {
				t.Fatal(err)
			}
		})
		if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("%s as a symlink: Open gave %v, want a refusal", which, err)
		}
		if _, err := Verify(dir); err == nil {
			t.Errorf("%s as a symlink: Verify passed", which)
		}
	}

	// A step directory that is a symlink to a complete checkpoint elsewhere
	// is not a checkpoint of this run.
	elsewhere := t.TempDir()
	other, err := writeStep(elsewhere, 50, 1, Options{}, Retention{})
	if err != nil {
		t.Fatal(err)
	}
	run := t.TempDir()
	if _, err := writeStep(run, 5, 1, Options{}, Retention{}); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(other, StepDir(run, 60)); err != nil {
		t.Fatal(err)
	}
	infos, err := List(run)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range infos {
		if in.Step == 60 {
			t.Errorf("List includes the symlinked step-60: %+v", in)
		}
	}
	if in, err := Latest(run); err != nil || in.Step != 5 {
		t.Errorf("Latest = step %d, %v; want step 5 (the symlink ignored)", in.Step, err)
	}
}
