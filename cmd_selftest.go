package main

import (
	"errors"
	"io"
)

// runSelftest is replaced by the collectives work.
func runSelftest(args []string, stdout, stderr io.Writer) error {
	return errors.New("selftest: not built yet")
}

// runBench is replaced by the collectives work.
func runBench(args []string, stdout, stderr io.Writer) error {
	return errors.New("bench: not built yet")
}
