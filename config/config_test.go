package config

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("default config invalid: %v", err)
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	c := Default()
	c.Model = "/models/x"
	c.Train.LR = 1.5e-4
	c.LoRA.Targets = []string{"q_proj", "v_proj"}
	c.Parallel.Zero1 = true
	src, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode("printed.toml", src)
	if err != nil {
		t.Fatalf("printed config does not reload: %v\n%s", err, src)
	}
	if !reflect.DeepEqual(c, back) {
		t.Fatalf("round trip changed the config:\nwant %+v\ngot  %+v", c, back)
	}
}

func TestListReplacesDefault(t *testing.T) {
	c, err := Decode("a.toml", []byte("[lora]\ntargets = [\"q_proj\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.LoRA.Targets, []string{"q_proj"}) {
		t.Fatalf("targets = %v, want [q_proj]", c.LoRA.Targets)
	}
}

func TestStrictErrors(t *testing.T) {
	cases := []struct {
		name, src string
		want      []string
	}{
		{"unknown top key", "model = \"random:tiny\"\nmodle = 3\n", []string{"run.toml:2", `unknown key "modle"`, `did you mean "model"`}},
		{"unknown table key", "[train]\nsteps = 3\nlearning_rate = 0.1\n", []string{"run.toml:3", `"train.learning_rate"`}},
		{"key in wrong table", "[data]\nsteps = 3\n", []string{"run.toml:2", `"data.steps"`, `"train.steps"`}},
		{"wrong type", "[train]\nsteps = \"ten\"\n", []string{"run.toml:2", "steps"}},
		{"syntax", "model = \n", []string{"run.toml:1"}},
		{"out of range", "[train]\n\nlr = -1.0\n", []string{"run.toml:3", "train.lr", "-1"}},
		{"bad enum", "device = \"tpu\"\n", []string{"run.toml:1", "device", "tpu"}},
		{"bad lora target", "[lora]\ntargets = [\"q_proj\", \"qkv\"]\n", []string{"run.toml:2", "lora.targets", "qkv"}},
		{"dropout range", "[lora]\ndropout = 1.0\n", []string{"run.toml:2", "lora.dropout"}},
		{"overwrite with resume", "[ckpt]\noverwrite = true\nresume = \"latest\"\n", []string{"run.toml:2", "ckpt.overwrite", "-resume continues"}},
	}
	dir := t.TempDir()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "run.toml")
			if err := os.WriteFile(path, []byte(tc.src), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path)
			if err == nil {
				t.Fatalf("no error for %q", tc.src)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestFlagsOverrideFile(t *testing.T) {
	c, err := Decode("a.toml", []byte("model = \"from-file\"\n[train]\nsteps = 7\nlr = 0.5\n"))
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	BindFlags(fs, &c)
	if err := fs.Parse([]string{"-steps", "100", "-lora-targets", "q_proj, up_proj"}); err != nil {
		t.Fatal(err)
	}
	if c.Model != "from-file" || c.Train.Steps != 100 || c.Train.LR != 0.5 {
		t.Fatalf("got model=%q steps=%d lr=%v", c.Model, c.Train.Steps, c.Train.LR)
	}
	if !reflect.DeepEqual(c.LoRA.Targets, []string{"q_proj", "up_proj"}) {
		t.Fatalf("targets %v", c.LoRA.Targets)
	}
}

func TestConfigPath(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-steps", "3", "-config", "a.toml"}, "a.toml"},
		{[]string{"--config=b.toml"}, "b.toml"},
		{[]string{"-steps", "3"}, ""},
	} {
		if got := ConfigPath(tc.args); got != tc.want {
			t.Errorf("ConfigPath(%v) = %q, want %q", tc.args, got, tc.want)
		}
	}
}

func TestKeysCoverSchema(t *testing.T) {
	keys := strings.Join(Keys(), " ")
	for _, k := range []string{"model", "data.seq_len", "train.lr", "lora.targets", "parallel.pp"} {
		if !strings.Contains(keys, k) {
			t.Errorf("Keys() lacks %s", k)
		}
	}
}

func TestResumeFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-resume"}, "latest"},
		{[]string{"-resume", "runs/x/checkpoints/step-00000010"}, "runs/x/checkpoints/step-00000010"},
		{[]string{"-resume=d"}, "d"},
		{[]string{"-resume", "-steps", "3"}, "latest"},
		{[]string{"-steps", "3"}, ""},
	} {
		c := Default()
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		BindFlags(fs, &c)
		if err := fs.Parse(ResumeArgs(tc.args)); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if c.Ckpt.Resume != tc.want {
			t.Errorf("%v: resume %q, want %q", tc.args, c.Ckpt.Resume, tc.want)
		}
	}
}

// TestRunDirFlags: -overwrite and -resume-any-base set their ckpt keys.
func TestRunDirFlags(t *testing.T) {
	c := Default()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	BindFlags(fs, &c)
	if err := fs.Parse([]string{"-overwrite", "-resume-any-base"}); err != nil {
		t.Fatal(err)
	}
	if !c.Ckpt.Overwrite || !c.Ckpt.ResumeAnyBase {
		t.Errorf("ckpt after -overwrite -resume-any-base: %+v", c.Ckpt)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("-overwrite alone: %v", err)
	}
}

// TestValidateDataColumnsAndOffload: data.columns must name the formats'
// keys, and offload needs checkpointing; each error names its key.
func TestValidateDataColumnsAndOffload(t *testing.T) {
	c := Default()
	c.Data.Columns = "question=instruction"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "data.columns") {
		t.Errorf("bad data.columns: %v", err)
	}
	c.Data.Columns = "instruction=question"
	if err := c.Validate(); err != nil {
		t.Errorf("good data.columns: %v", err)
	}
	c.Train.OffloadActivations = true
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "train.offload_activations") {
		t.Errorf("offload without checkpointing: %v", err)
	}
	c.Train.ActivationCheckpointing = true
	if err := c.Validate(); err != nil {
		t.Errorf("offload with checkpointing: %v", err)
	}
}
