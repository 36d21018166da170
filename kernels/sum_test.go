package kernels

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// sourcesHash is scripts/build-kernels.sh's "sources" hash: sha256 of the
// `sha256sum` listing of kernels/*.cu, kernels/*.cuh and the build script,
// sorted by path.
func sourcesHash(t *testing.T) string {
	t.Helper()
	var paths []string
	for _, pat := range []string{"*.cu", "*.cuh"} {
		m, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range m {
			paths = append(paths, "kernels/"+p)
		}
	}
	paths = append(paths, "scripts/build-kernels.sh")
	sort.Strings(paths)
	var listing strings.Builder
	for _, p := range paths {
		b, err := os.ReadFile(filepath.Join("..", p))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&listing, "%x  %s\n", sha256.Sum256(b), p)
	}
	s := sha256.Sum256([]byte(listing.String()))
	return hex.EncodeToString(s[:])
}

// TestKernelImageUpToDate fails when kernels/*.cu changed and kernels.fatbin was
// not rebuilt (or was replaced by hand): CI has no nvcc, so this hash is how it
// catches a stale kernel image.
func TestKernelImageUpToDate(t *testing.T) {
	sum, err := os.ReadFile("kernels.sum")
	if err != nil {
		t.Fatalf("%v: run scripts/build-kernels.sh on a machine with nvcc and commit kernels.fatbin and kernels.sum", err)
	}
	want := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(sum))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " "); ok {
			want[k] = v
		}
	}
	if got := sourcesHash(t); want["sources"] != got {
		t.Errorf("kernels.sum says sources %s, kernels/*.cu, *.cuh and scripts/build-kernels.sh hash to %s: the fatbin is stale; rerun scripts/build-kernels.sh on a GPU machine and commit kernels.fatbin and kernels.sum", want["sources"], got)
	}
	// The image under test: the embedded one, or the one TRAIN_KERNELS_FATBIN
	// names (scripts/gpu-check.sh rebuilds kernels.fatbin and kernels.sum and
	// tests the new image with a test binary built before it).
	img, what := fatbin, "the embedded kernels.fatbin"
	if p := os.Getenv(FatbinEnv); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		img, what = b, p
	}
	fb := sha256.Sum256(img)
	if got := hex.EncodeToString(fb[:]); want["fatbin"] != got {
		t.Errorf("kernels.sum says fatbin %s, %s hashes to %s", want["fatbin"], what, got)
	}
}
