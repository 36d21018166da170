package kernels

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestCublasCandidates lays out a fake file system (a CUDA toolkit and pip's
// nvidia-cublas wheels in a virtualenv, a conda environment, the user's and
// the system's site-packages) and checks the search order, that directories
// yield only files that exist, and that each file comes with its directory's
// cuBLASLt.
func TestCublasCandidates(t *testing.T) {
	root := t.TempDir()
	touch := func(paths ...string) {
		for _, p := range paths {
			p = filepath.Join(root, p)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	touch(
		"usr/local/cuda/lib64/libcublas.so.12", "usr/local/cuda/lib64/libcublasLt.so.12",
		"usr/local/lib/python3.11/dist-packages/nvidia/cublas/lib/libcublas.so.12",
		"usr/local/lib/python3.11/dist-packages/nvidia/cublas/lib/libcublasLt.so.12",
		"usr/lib/python3/dist-packages/nvidia/cublas/lib/libcublas.so.11", // no cuBLASLt beside it
		"usr/local/lib/python3.10/site-packages/nvidia/cublas/lib/libcublas.so.13",
		"usr/local/lib/python3.10/site-packages/nvidia/cublas/lib/libcublasLt.so.13",
		"home/u/.local/lib/python3.12/site-packages/nvidia/cublas/lib/libcublas.so.12",
		"home/u/.local/lib/python3.12/site-packages/nvidia/cublas/lib/libcublasLt.so.12",
		"venv/lib/python3.12/site-packages/nvidia/cublas/lib/libcublas.so.13",
		"venv/lib/python3.12/site-packages/nvidia/cublas/lib/libcublasLt.so.13",
		"conda/lib/python3.11/site-packages/nvidia/cublas/lib/libcublas.so.12",
		"conda/lib/python3.11/site-packages/nvidia/cublas/lib/libcublasLt.so.12",
		"conda/lib/python3.11/site-packages/nvidia/cudnn/lib/libcublas.so.12", // not cuBLAS's folder
		"opt/mine/libcublas.so.12", "opt/mine/libcublasLt.so.12",
	)
	env := map[string]string{
		"TRAIN_CUBLAS": filepath.Join(root, "opt/mine/libcublas.so.12"),
		"HOME":         filepath.Join(root, "home/u"),
		"VIRTUAL_ENV":  filepath.Join(root, "venv"),
		"CONDA_PREFIX": filepath.Join(root, "conda"),
	}
	got := cublasCandidates(func(k string) string { return env[k] }, root)

	in := func(dir, v string, lt bool) cublasCandidate {
		c := cublasCandidate{Lib: filepath.Join(root, dir, "libcublas.so."+v)}
		if lt {
			c.Lt = filepath.Join(root, dir, "libcublasLt.so."+v)
		}
		return c
	}
	const pip = "nvidia/cublas/lib"
	want := []cublasCandidate{
		in("opt/mine", "12", true),
		{Lib: "libcublas.so.13"}, {Lib: "libcublas.so.12"}, {Lib: "libcublas.so.11"},
		in("usr/local/cuda/lib64", "12", true),
		in("venv/lib/python3.12/site-packages/"+pip, "13", true),
		in("conda/lib/python3.11/site-packages/"+pip, "12", true),
		in("home/u/.local/lib/python3.12/site-packages/"+pip, "12", true),
		in("usr/local/lib/python3.11/dist-packages/"+pip, "12", true),
		in("usr/lib/python3/dist-packages/"+pip, "11", false),
		in("usr/local/lib/python3.10/site-packages/"+pip, "13", true),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("candidates:\n%s\nwant:\n%s", show(got), show(want))
	}

	// An empty environment and an empty tree: the sonames only.
	got = cublasCandidates(func(string) string { return "" }, t.TempDir())
	want = []cublasCandidate{{Lib: "libcublas.so.13"}, {Lib: "libcublas.so.12"}, {Lib: "libcublas.so.11"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("empty: %s, want %s", show(got), show(want))
	}

	// A soname in TRAIN_CUBLAS is passed on as is, first, without a cuBLASLt.
	got = cublasCandidates(func(k string) string {
		if k == "TRAIN_CUBLAS" {
			return "libcublas.so.12"
		}
		return ""
	}, t.TempDir())
	want = []cublasCandidate{{Lib: "libcublas.so.12"}, {Lib: "libcublas.so.13"}, {Lib: "libcublas.so.11"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("TRAIN_CUBLAS soname: %s, want %s", show(got), show(want))
	}
}

func show(c []cublasCandidate) string {
	s := ""
	for _, x := range c {
		s += "  " + x.Lib + " (Lt " + x.Lt + ")\n"
	}
	return s
}

// TestLocalGPU: a rank takes its local rank's GPU when it sees the node's
// GPUs, the one GPU when the launcher gave it one, and an error naming the
// fix when there are fewer GPUs than ranks.
func TestLocalGPU(t *testing.T) {
	for _, c := range []struct{ local, count, want int }{{0, 8, 0}, {5, 8, 5}, {5, 1, 0}, {0, 1, 0}} {
		if got, err := LocalGPU(c.local, c.count); err != nil || got != c.want {
			t.Errorf("LocalGPU(%d, %d) = %d, %v; want %d", c.local, c.count, got, err, c.want)
		}
	}
	if _, err := LocalGPU(4, 4); err == nil || !strings.Contains(err.Error(), "one rank per GPU") {
		t.Errorf("LocalGPU(4, 4): %v, want an error saying to start one rank per GPU", err)
	}
}

// TestCudnnCandidates: $TRAIN_CUDNN, the soname, the toolkit's folder, then
// pip's nvidia/cudnn/lib in wheelDirs' order (the same as cuBLAS's), files
// that exist only.
func TestCudnnCandidates(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{
		"usr/local/cuda/lib64/libcudnn.so.9",
		"venv/lib/python3.12/site-packages/nvidia/cudnn/lib/libcudnn.so.9",
		"home/u/.local/lib/python3.12/site-packages/nvidia/cudnn/lib/libcudnn.so.9",
		"usr/lib/python3/dist-packages/nvidia/cudnn/lib/libcudnn.so.8",           // not 9
		"usr/local/lib/python3.11/dist-packages/nvidia/cublas/lib/libcudnn.so.9", // not cuDNN's folder
	} {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{"TRAIN_CUDNN": "/opt/libcudnn.so.9", "VIRTUAL_ENV": filepath.Join(root, "venv"), "HOME": filepath.Join(root, "home/u")}
	got := cudnnCandidates(func(k string) string { return env[k] }, root)
	want := []string{"/opt/libcudnn.so.9", "libcudnn.so.9",
		filepath.Join(root, "usr/local/cuda/lib64/libcudnn.so.9"),
		filepath.Join(root, "venv/lib/python3.12/site-packages/nvidia/cudnn/lib/libcudnn.so.9"),
		filepath.Join(root, "home/u/.local/lib/python3.12/site-packages/nvidia/cudnn/lib/libcudnn.so.9"),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("cudnnCandidates:\n got %q\nwant %q", got, want)
	}
}
