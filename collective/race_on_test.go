//go:build race

package collective

// raceEnabled is true when built with -race; tests use smaller sizes then.
const raceEnabled = true
