package config

import (
	"strings"
	"testing"
)

// FuzzDecode feeds arbitrary TOML to Decode and what it accepts to Validate and
// Encode: errors name the source, nothing panics, and an accepted, valid config
// encodes and decodes back to an equal encoding.
func FuzzDecode(f *testing.F) {
	def, err := Default().Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(def)
	for _, s := range []string{
		"",
		"[train]\nsteps = 10\nlr = 1e-3\n",
		"[train]\nsteps = -1\n",
		"[train]\nstep = 10\n",
		"[lora]\ntargets = [\"q_proj\", \"v_proj\"]\nrank = 8\n",
		"[ckpt]\ncontinue_on_error = true\nevery = 2\n",
		"[parallel]\npp = 2\ntimeout_seconds = 0\n",
		"a = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]",
		"[train]\nlr = \"fast\"\n",
		"[[train]]\n",
		"x = 1979-05-27T07:32:00Z\n",
		"[train]\nsteps = 99999999999999999999999\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := Decode("fuzz.toml", src)
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.toml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if cfg.Validate() != nil {
			return
		}
		enc, err := cfg.Encode()
		if err != nil {
			t.Fatalf("a valid config does not encode: %v", err)
		}
		back, err := Decode("again.toml", enc)
		if err != nil {
			t.Fatalf("the encoding of an accepted config does not decode: %v\n%s", err, enc)
		}
		enc2, err := back.Encode()
		if err != nil || string(enc2) != string(enc) {
			t.Fatalf("encode/decode is not stable:\n%s\n---\n%s", enc, enc2)
		}
	})
}
