// tlogverify checks a hashfed export directory with Go's golang.org/x/mod/sumdb/note and
// sumdb/tlog: off-the-shelf code from the ecosystem hashfed's formats come from, none of ours.
//
//	tlogverify EXPORT_DIR
//
// It opens DIR/checkpoint with the verifier key in DIR/vkey (note.Open), reads the hash tiles
// through tlog.TileHashReader (which authenticates every tile against the checkpoint's root),
// recomputes the root (tlog.TreeHash), proves and checks the inclusion of one leaf in every tile
// (tlog.ProveRecord / tlog.CheckRecord) and the consistency of smaller trees (ProveTree/CheckTree).
// Prints "ok <size>" and exits 0, or prints the failure and exits 1.
package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func fail(format string, args ...interface{}) {
	fmt.Printf("FAIL: "+format+"\n", args...)
	os.Exit(1)
}

// tilePath is the C2SP tlog-tiles path (no height element, unlike x/mod's own layout).
func tilePath(t tlog.Tile) string {
	digits := fmt.Sprintf("%03d", t.N)
	for len(digits)%3 != 0 {
		digits = "0" + digits
	}
	var parts []string
	for i := 0; i < len(digits); i += 3 {
		parts = append(parts, digits[i:i+3])
	}
	for i := 0; i < len(parts)-1; i++ {
		parts[i] = "x" + parts[i]
	}
	p := fmt.Sprintf("tile/%d/%s", t.L, strings.Join(parts, "/"))
	if t.W != 1<<uint(t.H) {
		p += fmt.Sprintf(".p/%d", t.W)
	}
	return p
}

type dirTiles struct{ dir string }

func (d dirTiles) Height() int { return 8 }

func (d dirTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		data, err := os.ReadFile(filepath.Join(d.dir, tilePath(t)))
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func (d dirTiles) SaveTiles(tiles []tlog.Tile, data [][]byte) {}

func main() {
	if len(os.Args) != 2 {
		fail("usage: tlogverify EXPORT_DIR")
	}
	dir := os.Args[1]
	vkey, err := os.ReadFile(filepath.Join(dir, "vkey"))
	if err != nil {
		fail("%v", err)
	}
	verifier, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		fail("vkey: %v", err)
	}
	msg, err := os.ReadFile(filepath.Join(dir, "checkpoint"))
	if err != nil {
		fail("%v", err)
	}
	n, err := note.Open(msg, note.VerifierList(verifier))
	if err != nil {
		fail("note.Open: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != verifier.Name() {
		fail("checkpoint origin %q does not match key name %q", lines[0], verifier.Name())
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("size: %v", err)
	}
	rootBytes, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(rootBytes) != tlog.HashSize {
		fail("root hash: %v", err)
	}
	var root tlog.Hash
	copy(root[:], rootBytes)
	tree := tlog.Tree{N: size, Hash: root}
	reader := tlog.TileHashReader(tree, dirTiles{dir})

	got, err := tlog.TreeHash(size, reader)
	if err != nil {
		fail("TreeHash: %v", err)
	}
	if got != root {
		fail("recomputed root %v != checkpoint root %v", got, root)
	}
	// One leaf of every level-0 tile, so that every hash tile is read and authenticated.
	indices := []int64{size / 3, size / 2, size - 1}
	for i := int64(0); i < size; i += 256 {
		indices = append(indices, i)
	}
	for _, i := range indices {
		if i < 0 || i >= size {
			continue
		}
		proof, err := tlog.ProveRecord(size, i, reader)
		if err != nil {
			fail("ProveRecord(%d): %v", i, err)
		}
		leaf, err := reader.ReadHashes([]int64{tlog.StoredHashIndex(0, i)})
		if err != nil {
			fail("leaf %d: %v", i, err)
		}
		if err := tlog.CheckRecord(proof, size, root, i, leaf[0]); err != nil {
			fail("CheckRecord(%d): %v", i, err)
		}
	}
	for _, old := range []int64{1, size / 2, size - 1} {
		if old < 1 || old >= size {
			continue
		}
		oldHash, err := tlog.TreeHash(old, reader)
		if err != nil {
			fail("TreeHash(%d): %v", old, err)
		}
		proof, err := tlog.ProveTree(size, old, reader)
		if err != nil {
			fail("ProveTree(%d): %v", old, err)
		}
		if err := tlog.CheckTree(proof, size, root, old, oldHash); err != nil {
			fail("CheckTree(%d): %v", old, err)
		}
	}
	fmt.Printf("ok %d\n", size)
}
