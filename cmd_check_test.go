package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"train/model"
)

func TestCheckCommandStories(t *testing.T) {
	dir := "../shared/models/stories260K"
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("skipping: %s not found (../shared is absent): %v", dir, err)
	}
	var out, errb bytes.Buffer
	if code := mainExit([]string{"check", "-model", dir}, &out, &errb); code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "compatible        yes") {
		t.Errorf("output:\n%s", out.String())
	}
}

func TestCheckCommandJSON(t *testing.T) {
	var out, errb bytes.Buffer
	if code := mainExit([]string{"check", "-json", "-model", "random:llama-3.1-8b"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var r model.Report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil || r.Parameters != 8030261248 || r.KVHeads != 8 {
		t.Errorf("json %v: %s", err, out.String())
	}
}

func TestCheckCommandIncompatible(t *testing.T) {
	dir := t.TempDir()
	cfg, _ := model.RandomConfig("random:tiny")
	cfg.HiddenAct = "gelu"
	data, _ := model.MarshalConfig(cfg)
	os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644)
	var out, errb bytes.Buffer
	if code := mainExit([]string{"check", "-model", dir}, &out, &errb); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	for _, want := range []string{"INCOMPATIBLE: 2 problem(s)", `  - hidden_act "gelu" is not supported`, "  - " + dir + ": no model.safetensors"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, out.String())
		}
	}
	if want := "train check: " + dir + ": 2 incompatibilities\n"; errb.String() != want {
		t.Errorf("stderr %q, want %q", errb.String(), want)
	}
}

func TestCheckCommandUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := mainExit([]string{"check"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "-model is required") {
		t.Errorf("exit %d: %s", code, errb.String())
	}
	errb.Reset()
	if code := mainExit([]string{"check", "-h"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "random:llama-3.1-70b") {
		t.Errorf("exit %d: %s", code, errb.String())
	}
	errb.Reset()
	if code := mainExit([]string{"check", "-model", t.TempDir()}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "config.json: no such file") {
		t.Errorf("exit %d: %s", code, errb.String())
	}
}
