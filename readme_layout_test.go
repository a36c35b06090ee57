package batuta_test

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestREADMELayoutMatchesTree holds the Layout section of README.md to the
// tree, both ways: every directory at the top, under internal/ and under
// adapters/ (a directory also counts as named by a path inside it), and
// every non-test Go file of the core package, is named there
// (by its name or a pattern such as store*.go); and every path named there
// exists.
func TestREADMELayoutMatchesTree(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	_, after, ok := strings.Cut(string(readme), "\n## Layout\n")
	require.True(t, ok, "README.md has no Layout section")
	_, block, ok := strings.Cut(after, "```\n")
	require.True(t, ok)
	block, _, ok = strings.Cut(block, "```")
	require.True(t, ok)

	// Names are the words, in each line's first column (up to two spaces),
	// that contain a dot or a slash: "store*.go", "internal/cronexpr",
	// "trigger.go, event_source.go".
	var names []string
	for _, line := range strings.Split(block, "\n") {
		first, _, _ := strings.Cut(strings.TrimSpace(line), "  ")
		for _, w := range regexp.MustCompile(`[^\s,]+`).FindAllString(first, -1) {
			if strings.ContainsAny(w, "./") {
				names = append(names, strings.TrimSuffix(w, "/"))
			}
		}
	}
	named := func(p string) bool {
		for _, n := range names {
			if n == "*.go" {
				continue // the core module's line names no file
			}
			if ok, _ := path.Match(n, p); ok || strings.HasPrefix(n, p+"/") {
				return true
			}
		}
		return false
	}

	var want []string
	for _, dir := range []string{".", "internal", "adapters"} {
		ents, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, e := range ents {
			name := path.Join(dir, e.Name())
			switch {
			case e.IsDir() && e.Name() != ".git" && e.Name() != "testdata":
				want = append(want, name)
			case dir == "." && strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go"):
				want = append(want, name)
			}
		}
	}
	for _, p := range want {
		require.Truef(t, named(p), "README.md's Layout does not name %s", p)
	}
	for _, n := range names {
		if n == "*.go" || strings.ContainsAny(n, "*?[") {
			matches, err := filepath.Glob(n)
			require.NoError(t, err)
			require.NotEmptyf(t, matches, "README.md's Layout names %s, which matches nothing", n)
			continue
		}
		_, err := os.Stat(n)
		require.NoErrorf(t, err, "README.md's Layout names %s, which does not exist", n)
	}
}
