// Package export writes a fine-tuned model in the formats other tools load: the
// LoRA adapter in peft's layout, the merged model in Hugging Face layout, or
// the merged model as one GGUF file for llama.cpp.
//
// The trained tensors come from a peft adapter over a base model, or from one
// of train's checkpoints (a LoRA adapter or a full fine-tune) over the base
// model it names. For hf and gguf the adapter is merged into the weights
// (W += scale·B·A) first; a peft adapter is read back after writing and
// compared with what was meant to be written.
package export

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	fileformat "train/format"
	"train/format/gguf"
	"train/format/peft"
	"train/format/safetensors"
	"train/model"
	"train/trainer"
)

// Options say what to export, from where, and how.
type Options struct {
	// Model is the base model: a Hugging Face directory or a .gguf file. With
	// Checkpoint, "" means the base model the checkpoint names.
	Model string
	// Adapter is a LoRA adapter directory in peft format; "" for none.
	Adapter string
	// Checkpoint, instead of Adapter, takes the trained tensors from one of
	// train's checkpoints, or from the newest complete one of a run directory.
	Checkpoint string
	// Format is "peft", "hf", "gguf" or "gguf-lora" (the adapter alone as a
	// GGUF adapter file for llama.cpp's --lora, over a GGUF of the base).
	Format string
	// Out is the output directory (peft, hf) or file (gguf).
	Out string
	// DType is the stored precision: "f32", "f16" or "bf16";
	// peft adapters are always f32.
	DType string
	// Quant, for gguf, quantizes the matrices: "q8_0" or "q4_0" (llama.cpp's
	// block formats, bit for bit as its reference quantizers); "" stores them
	// in DType. "q4_k_m" is refused: see gguf.matrixType's neighbours.
	Quant string
	// MaxShard is, for hf, the largest weight file before sharding (bytes).
	MaxShard int64
	// Tokenizer is the directory whose tokenizer.json to ship; "" for the
	// model directory's, when it has one.
	Tokenizer string
	// Name is gguf's general.name; "" for the model's directory or file name.
	Name string
	// Warn, when not nil, is told what the export leaves out (no tokenizer).
	Warn func(msg string)
}

// Run loads the model and the trained tensors, writes them as o.Format says
// and reports on stdout what it wrote.
func Run(o Options, stdout io.Writer) error {
	var w *model.Weights
	var lora *model.LoRA
	var err error
	if o.Checkpoint != "" {
		if w, lora, o.Model, err = trainer.LoadCheckpointModel(o.Checkpoint, o.Model); err != nil {
			return err
		}
		if (o.Format == "peft" || o.Format == "gguf-lora") && lora == nil {
			return fmt.Errorf("%s holds a full fine-tune, not an adapter: export it with -format hf or gguf", o.Checkpoint)
		}
	} else {
		if w, err = fileformat.LoadModel(o.Model); err != nil {
			return fmt.Errorf("model %s: %w", o.Model, err)
		}
		if o.Adapter != "" {
			if lora, err = peft.Read(o.Adapter, w.Config); err != nil {
				return err
			}
		}
	}
	if o.Format == "peft" {
		return writePEFT(o, w, lora, stdout)
	}
	if o.Format == "gguf-lora" {
		if lora == nil {
			return errors.New("gguf-lora: no adapter to write (give an adapter or a LoRA checkpoint)")
		}
		if err := gguf.WriteLoRA(o.Out, lora, &w.Config, o.Name); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote GGUF LoRA adapter (r=%d, alpha=%g, %d tensors) to %s\n", lora.Config.Rank, lora.Config.Alpha, len(lora.Tensors()), o.Out)
		return nil
	}
	if lora != nil {
		if err := model.MergeLoRA(w, lora); err != nil {
			return err
		}
	}
	tok, cleanup, err := tokenizerDir(o)
	if err != nil {
		return err
	}
	defer cleanup()
	merged := ""
	if lora != nil {
		merged = " with the adapter merged"
	}
	switch o.Format {
	case "hf":
		dt, ok := map[string]safetensors.DType{"f32": safetensors.F32, "f16": safetensors.F16, "bf16": safetensors.BF16}[o.DType]
		if !ok {
			return fmt.Errorf("hf: dtype %q: f32, f16 or bf16", o.DType)
		}
		if err := model.WriteHFModelAs(o.Out, w, tok, o.MaxShard, dt); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote Hugging Face model (%s%s) to %s\n", o.DType, merged, o.Out)
	case "gguf":
		typ, ok := map[string]gguf.GGMLType{"f32": gguf.F32, "f16": gguf.F16, "bf16": gguf.BF16}[o.DType]
		if !ok {
			return fmt.Errorf("gguf: dtype %q: f32, f16 or bf16", o.DType)
		}
		stored := o.DType
		if o.Quant != "" {
			if typ, err = QuantType(o.Quant); err != nil {
				return err
			}
			stored = o.Quant
		}
		name := o.Name
		if name == "" {
			name = filepath.Base(strings.TrimSuffix(filepath.Clean(o.Model), ".gguf"))
		}
		if dir := filepath.Dir(o.Out); dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
		}
		if err := gguf.WriteModel(o.Out, w, gguf.ModelOptions{Type: typ, Name: name, TokenizerDir: tok}); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote GGUF (%s%s) to %s\n", stored, merged, o.Out)
	default:
		return fmt.Errorf("format %q: peft, hf, gguf or gguf-lora", o.Format)
	}
	return nil
}

// QuantType is the GGUF type of a -quant value. Q4_K_M is refused: its
// reference quantizer (make_qkx2_quants' iterative search of scales and
// minimums, and Q6_K's make_qx_quants for some tensors) is not reproduced
// here, and a file llama.cpp would quantize differently is not written.
func QuantType(q string) (gguf.GGMLType, error) {
	switch q {
	case "q8_0":
		return gguf.Q8_0, nil
	case "q4_0":
		return gguf.Q4_0, nil
	case "q4_k_m":
		return 0, errors.New("gguf: -quant q4_k_m is not supported: train does not reproduce llama.cpp's K-quant reference quantizer bit for bit; export -quant q8_0 (or -dtype f16) and run llama.cpp's llama-quantize FILE OUT Q4_K_M")
	}
	return 0, fmt.Errorf("gguf: -quant %q: q8_0 or q4_0", q)
}

// writePEFT writes the adapter in peft's layout, then reads it back and checks
// that every tensor came back as it went in.
func writePEFT(o Options, w *model.Weights, lora *model.LoRA, stdout io.Writer) error {
	if lora == nil {
		return errors.New("peft: no adapter to write (give an adapter or a LoRA checkpoint)")
	}
	if err := peft.Write(o.Out, lora, &w.Config, o.Model); err != nil {
		return err
	}
	back, err := peft.Read(o.Out, w.Config)
	if err != nil {
		return fmt.Errorf("checking the written adapter: %w", err)
	}
	if err := sameAdapter(back, lora); err != nil {
		return fmt.Errorf("checking the written adapter %s: %w", o.Out, err)
	}
	fmt.Fprintf(stdout, "wrote peft adapter (r=%d, alpha=%g, %d tensors) to %s\n", lora.Config.Rank, lora.Config.Alpha, len(lora.Tensors()), o.Out)
	return nil
}

// tokenizerDir is the directory whose tokenizer files ship with the model:
// o.Tokenizer, else the model directory when it holds a tokenizer.json, else
// "" (none, and Warn is told so). A GGUF file (as -tokenizer, or as the model
// without one) gives its embedded tokenizer, rebuilt as tokenizer.json and
// tokenizer_config.json in a temporary directory that cleanup removes.
func tokenizerDir(o Options) (dir string, cleanup func(), err error) {
	cleanup = func() {}
	src := o.Tokenizer
	if src == "" && fileformat.IsGGUF(o.Model) {
		src = o.Model
	}
	if fileformat.IsGGUF(src) {
		return ggufTokenizerDir(src)
	}
	if o.Tokenizer != "" {
		return o.Tokenizer, cleanup, nil
	}
	warn := func(msg string) {
		if o.Warn != nil {
			o.Warn(msg)
		}
	}
	if model.IsRandomModel(o.Model) {
		warn(fmt.Sprintf("%s has no tokenizer: writing none (give -tokenizer DIR)", o.Model))
		return "", cleanup, nil
	}
	st, err := os.Stat(filepath.Join(o.Model, "tokenizer.json"))
	switch {
	case err == nil && !st.IsDir():
		return o.Model, cleanup, nil
	case !errors.Is(err, fs.ErrNotExist) && err != nil:
		return "", cleanup, fmt.Errorf("tokenizer: %w", err)
	}
	warn(fmt.Sprintf("no tokenizer.json beside %s: writing none (give -tokenizer DIR)", o.Model))
	return "", cleanup, nil
}

// ggufTokenizerDir writes the tokenizer embedded in the GGUF file path into a
// new temporary directory.
func ggufTokenizerDir(path string) (string, func(), error) {
	g, err := gguf.Open(path)
	if err != nil {
		return "", func() {}, err
	}
	defer g.Close()
	dir, err := os.MkdirTemp("", "train-export-tokenizer-")
	if err != nil {
		return "", func() {}, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	if err := gguf.WriteTokenizerFiles(g, dir); err != nil {
		cleanup()
		return "", func() {}, err
	}
	return dir, cleanup, nil
}

// sameAdapter reports the first difference between two adapters' tensors.
func sameAdapter(a, b *model.LoRA) error {
	if a.Config.Rank != b.Config.Rank || a.Config.Alpha != b.Config.Alpha || a.Config.RSLoRA != b.Config.RSLoRA {
		return fmt.Errorf("config %+v, want %+v", a.Config, b.Config)
	}
	at, bt := a.Tensors(), b.Tensors()
	if len(at) != len(bt) {
		return fmt.Errorf("%d tensors, want %d", len(at), len(bt))
	}
	for name, v := range bt {
		u := at[name]
		if len(u) != len(v) {
			return fmt.Errorf("%s: %d values, want %d", name, len(u), len(v))
		}
		for i := range v {
			if u[i] != v[i] {
				return fmt.Errorf("%s[%d] = %v, want %v", name, i, u[i], v[i])
			}
		}
	}
	return nil
}
