package main

import (
	"errors"
	"io"
)

// runCheck is replaced by the model-loading work.
func runCheck(args []string, stdout, stderr io.Writer) error {
	return errors.New("check: not built yet")
}
