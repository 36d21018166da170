package collective

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// secretFileInHome is where, under the user's home, the per-user secret lives:
// on a cluster every node sees it through the shared home directory.
const secretFileInHome = ".config/train/job-secret"

// minSecret is the fewest bytes a secret file must hold (the 32 random bytes
// a new one gets, hex-encoded, are 64).
const minSecret = 32

// derivedToken is the token of a job whose launcher hands it no secret: the
// job id mixed with the user's secret (made on first use). It also returns
// the source to name in the start-up log.
func derivedToken(cfg Config) ([]byte, string, error) {
	if cfg.JobID == "" {
		return nil, "", errors.New("no job token: set TRAIN_JOB_TOKEN or run under a launcher")
	}
	path := cfg.SecretFile
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, "", fmt.Errorf("no job token: set TRAIN_JOB_TOKEN (the same random secret for every rank), or HOME or TRAIN_SECRET_FILE for a per-user secret: %w", err)
		}
		path = filepath.Join(home, secretFileInHome)
	}
	secret, err := userSecret(path)
	if err != nil {
		return nil, "", err
	}
	return deriveToken(cfg.JobID + "\x00user secret\x00" + string(secret)), "per-user secret " + path, nil
}

// userSecret reads the secret in path, making the file (32 random bytes,
// hex, mode 0600, in a 0700 folder) when there is none.
func userSecret(path string) ([]byte, error) {
	secret, err := readSecret(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := makeSecret(path); err != nil {
			return nil, err
		}
		secret, err = readSecret(path)
	}
	return secret, err
}

// makeSecret writes a new secret to path unless one is there. The ranks of a
// job may all make it at once, on one host or through a shared home: each
// writes a file of its own and links it to path, which, unlike a rename,
// fails when path exists, so that one wins and every rank reads its secret.
func makeSecret(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("job secret: %w (set TRAIN_JOB_TOKEN, or TRAIN_SECRET_FILE to a writable place)", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return fmt.Errorf("job secret: %w", err)
	}
	f, err := os.CreateTemp(dir, ".job-secret-*") // mode 0600
	if err != nil {
		return fmt.Errorf("job secret: %w (set TRAIN_JOB_TOKEN, or TRAIN_SECRET_FILE to a writable place)", err)
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(hex.EncodeToString(raw[:]) + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(f.Name(), path)
	}
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("job secret: making %s: %w (set TRAIN_JOB_TOKEN instead)", path, err)
	}
	return nil
}

// readSecret reads the secret in path: a regular file of this user's that no
// other user may read or write.
func readSecret(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("job secret: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("job secret %s is not a regular file: remove it to have a new one made, or set TRAIN_JOB_TOKEN", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("job secret %s is open to other users (mode %04o): run chmod 600 %s (or remove it to have a new one made), or set TRAIN_JOB_TOKEN", path, perm, path)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Getuid() {
		return nil, fmt.Errorf("job secret %s belongs to user id %d, not to you (%d): remove it, or set TRAIN_SECRET_FILE or TRAIN_JOB_TOKEN", path, sys.Uid, os.Getuid())
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("job secret: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) < minSecret {
		return nil, fmt.Errorf("job secret %s holds %d bytes, fewer than %d: remove it to have a new one made", path, len(b), minSecret)
	}
	return b, nil
}
