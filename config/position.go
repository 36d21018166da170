package config

import (
	"bufio"
	"bytes"
	"fmt"
	"reflect"
	"strings"

	"github.com/BurntSushi/toml"
)

// keyLine finds the line where a dotted key is set in TOML source, so that errors
// found after decoding (unknown keys, values out of range) can point at it. It
// understands [table] headers and dotted keys, which is all this schema uses; it
// returns 0 when the key cannot be found (for example, a key set by a flag).
func keyLine(src []byte, key toml.Key) int {
	if len(key) == 0 {
		return 0
	}
	var table []string
	sc := bufio.NewScanner(bytes.NewReader(src))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(text, "[") {
			name := strings.Trim(text, "[] \t")
			if i := strings.Index(name, "]"); i >= 0 {
				name = name[:i]
			}
			table = splitKey(name)
			if equalKeys(table, key) {
				return line
			}
			continue
		}
		eq := strings.Index(text, "=")
		if eq <= 0 || strings.HasPrefix(text, "#") {
			continue
		}
		full := append(append([]string{}, table...), splitKey(text[:eq])...)
		if equalKeys(full, key) || (len(full) < len(key) && equalKeys(full, key[:len(full)])) {
			return line
		}
	}
	return 0
}

func splitKey(s string) []string {
	parts := strings.Split(s, ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return parts
}

func equalKeys(a []string, b toml.Key) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// suggest names the key that was probably meant, when an unknown key is one edit
// away from a known one or sits in the wrong table.
func suggest(k toml.Key) string {
	known := Keys()
	last := k[len(k)-1]
	best, bestDist := "", 3
	for _, cand := range known {
		parts := strings.Split(cand, ".")
		d := editDistance(last, parts[len(parts)-1])
		if d == 0 && cand != k.String() {
			return fmt.Sprintf(" (did you mean %q?)", cand)
		}
		if d < bestDist {
			best, bestDist = cand, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return ""
}

// Keys lists every dotted key of the schema, in declaration order.
func Keys() []string {
	var out []string
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := f.Tag.Get("toml")
			if name == "" || name == "-" {
				continue
			}
			if f.Type.Kind() == reflect.Struct {
				walk(prefix+name+".", f.Type)
				continue
			}
			out = append(out, prefix+name)
		}
	}
	walk("", reflect.TypeOf(Config{}))
	return out
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
