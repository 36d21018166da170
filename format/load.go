// Package format holds the file formats models and adapters are stored in, one
// package each: safetensors (Hugging Face's weight files), gguf (llama.cpp's
// model file, and the llama architecture's mapping onto it) and peft (LoRA
// adapters as Hugging Face's peft library saves them). This package itself
// opens a model whatever its format, for the commands that accept either.
package format

import (
	"os"

	"train/format/gguf"
	"train/model"
)

// LoadModel loads a whole model from a Hugging Face model directory or a .gguf
// file (by its magic, whatever its name).
func LoadModel(path string) (*model.Weights, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return model.LoadModel(path)
	}
	g, err := gguf.Open(path)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	w, _, err := gguf.ReadModel(g)
	return w, err
}
