//go:build !race

package main

// raceEnabled is true under -race, which slows the CPU kernels several times; the
// training tests take fewer steps then.
const raceEnabled = false
