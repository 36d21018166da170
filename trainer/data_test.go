package trainer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"train/config"
)

// TestRunRefusesBadChatTemplate: a chat_template that does not compile stops
// the run at start-up, naming the tokenizer_config.json it came from, before
// the data is read or the weights are built.
func TestRunRefusesBadChatTemplate(t *testing.T) {
	requireStories(t)
	dir := filepath.Join(t.TempDir(), "tok")
	os.MkdirAll(dir, 0o755)
	b, err := os.ReadFile(filepath.Join(storiesDir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), b, 0o644)
	os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(`{"chat_template": "{% for m in messages %}{{ m.content }"}`), 0o644)
	cfg := storiesConfig(t, "lora", 2, func(c *config.Config) { c.Tokenizer = dir })
	_, _, stderr, err := run(t, cfg)
	if want := filepath.Join(dir, "tokenizer_config.json") + ": chat_template"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("want an error naming %s, got %v\n%s", want, err, stderr)
	}
}
