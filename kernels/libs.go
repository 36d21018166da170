package kernels

import (
	"os"
	"path/filepath"
	"strings"
)

// cublasCandidate is one place cuBLAS may be loaded from, tried in order by
// cuda.go's loadLibs.
type cublasCandidate struct {
	// Lib is dlopen's argument: a soname, which the dynamic linker looks up on
	// the library path, or a file path.
	Lib string
	// Lt is the libcublasLt of Lib's directory, loaded first with RTLD_GLOBAL
	// so that Lib finds its own cuBLASLt, not another version's; "" for a
	// soname (the dynamic linker finds its dependency).
	Lt string
}

// cublasVersions are the sonames' versions tried, newest first: CUDA 13, 12, 11.
var cublasVersions = []string{"13", "12", "11"}

// cublasCandidates lists where cuBLAS is looked for, in order:
//
//  1. $TRAIN_CUBLAS (a path or a soname), whatever it names;
//  2. libcublas.so.13, .12, .11 on the library path (a CUDA toolkit installed
//     system-wide, LD_LIBRARY_PATH);
//  3. /usr/local/cuda/lib64, the toolkit's default location;
//  4. pip's wheels (nvidia-cublas-cu12 and the like) under nvidia/cublas/lib of
//     Python's package directories: the active virtualenv and conda
//     environment first (the user chose them), then the user's and the
//     system's.
//
// Directories are searched only for files that exist, so a failure to load
// lists what was really tried. getenv reads the environment; root prefixes
// the fixed system directories (empty in use, a temporary tree in tests).
func cublasCandidates(getenv func(string) string, root string) []cublasCandidate {
	var c []cublasCandidate
	seen := map[string]bool{}
	add := func(lib, lt string) {
		if !seen[lib] {
			seen[lib] = true
			c = append(c, cublasCandidate{Lib: lib, Lt: lt})
		}
	}
	if p := getenv("TRAIN_CUBLAS"); p != "" {
		lt := ""
		if dir, base := filepath.Split(p); dir != "" && strings.HasPrefix(base, "libcublas.") {
			if l := filepath.Join(dir, "libcublasLt."+strings.TrimPrefix(base, "libcublas.")); exists(l) {
				lt = l
			}
		}
		add(p, lt)
	}
	for _, v := range cublasVersions {
		add("libcublas.so."+v, "")
	}
	dirs := append([]string{filepath.Join(root, "/usr/local/cuda/lib64")}, wheelDirs(getenv, root, "cublas")...)
	for _, d := range dirs {
		for _, v := range cublasVersions {
			lib := filepath.Join(d, "libcublas.so."+v)
			if !exists(lib) {
				continue
			}
			lt := filepath.Join(d, "libcublasLt.so."+v)
			if !exists(lt) {
				lt = ""
			}
			add(lib, lt)
		}
	}
	return c
}

// wheelDirs are the library folders of pip's NVIDIA wheel for lib
// (nvidia/LIB/lib) that exist under Python's package directories, the
// active virtualenv and conda environment first (the user chose them), then
// the user's and the system's.
func wheelDirs(getenv func(string) string, root, lib string) []string {
	var sites []string
	for _, env := range []string{"VIRTUAL_ENV", "CONDA_PREFIX"} {
		if p := getenv(env); p != "" {
			sites = append(sites, filepath.Join(p, "lib/python3*/site-packages"))
		}
	}
	if home := getenv("HOME"); home != "" {
		sites = append(sites, filepath.Join(home, ".local/lib/python3*/site-packages"))
	}
	sites = append(sites,
		filepath.Join(root, "/usr/local/lib/python3*/dist-packages"),
		filepath.Join(root, "/usr/lib/python3/dist-packages"),
		filepath.Join(root, "/usr/local/lib/python3*/site-packages"))
	var dirs []string
	for _, s := range sites {
		m, _ := filepath.Glob(filepath.Join(s, "nvidia", lib, "lib")) // the only error is a bad pattern
		dirs = append(dirs, m...)
	}
	return dirs
}

// cudnnCandidates are where libcudnn.so.9 is looked for, in order:
// $TRAIN_CUDNN, the library path, /usr/local/cuda/lib64, then pip's
// nvidia/cudnn/lib (wheelDirs' order); only files that exist, past the
// soname.
func cudnnCandidates(getenv func(string) string, root string) []string {
	var c []string
	if p := getenv("TRAIN_CUDNN"); p != "" {
		c = append(c, p)
	}
	c = append(c, "libcudnn.so.9")
	for _, d := range append([]string{filepath.Join(root, "/usr/local/cuda/lib64")}, wheelDirs(getenv, root, "cudnn")...) {
		if lib := filepath.Join(d, "libcudnn.so.9"); exists(lib) {
			c = append(c, lib)
		}
	}
	return c
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
