package inbox_test

import (
	"os"
	"strings"
	"testing"
)

// docs/inbox.md shows the code the tests run: the Python consumer's
// handling (testdata/consumer.py) and the Go example's consume
// (example_test.go), each between its markers, word for word.
func TestDocsShowTestedExamples(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../docs/inbox.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, ex := range []struct{ file, begin, end string }{
		{"testdata/consumer.py", "# --- example: handle ---\n", "# --- end example ---"},
		{"example_test.go", "// --- example: consume ---\n", "// --- end example ---"},
	} {
		src, err := os.ReadFile(ex.file)
		if err != nil {
			t.Fatal(err)
		}
		_, rest, ok1 := strings.Cut(string(src), ex.begin)
		block, _, ok2 := strings.Cut(rest, ex.end)
		if !ok1 || !ok2 {
			t.Fatalf("%s: markers %q ... %q not found", ex.file, ex.begin, ex.end)
		}
		if block = strings.Trim(block, "\n"); !strings.Contains(string(doc), block) {
			t.Errorf("docs/inbox.md does not show %s's example as it is:\n%s", ex.file, block)
		}
	}
}
