package grammar

import (
	"path/filepath"
	"sync"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"
	"github.com/llmserve/llmserve/tokenizer"
)

var (
	vocabOnce sync.Map // tokenizer name -> *vocabEntry
)

type vocabEntry struct {
	once sync.Once
	v    *Vocab
	tok  *tokenizer.Tokenizer
	err  error
}

// testVocab loads a tokenizer from the shared test data (skipping when it
// is absent) and builds its Vocab once per test binary.
func testVocab(t testing.TB, name string) (*Vocab, *tokenizer.Tokenizer) {
	t.Helper()
	dir := shareddata.Path(t, "tokenizers", name)
	e, _ := vocabOnce.LoadOrStore(name, &vocabEntry{})
	ve := e.(*vocabEntry)
	ve.once.Do(func() {
		ve.tok, ve.err = tokenizer.LoadDir(filepath.Clean(dir))
		if ve.err == nil {
			ve.v, ve.err = VocabFromTokenizer(ve.tok)
		}
	})
	if ve.err != nil {
		t.Fatal(ve.err)
	}
	return ve.v, ve.tok
}

func TestVocabTrie(t *testing.T) {
	for _, name := range []string{"qwen3", "mistral-sp"} {
		t.Run(name, func(t *testing.T) {
			v, tok := testVocab(t, name)
			if v.Size() != tok.VocabSize() {
				t.Fatalf("size %d, tokenizer %d", v.Size(), tok.VocabSize())
			}
			// Every non-special token is in the trie at the node its bytes lead to.
			n := 0
			for id := 0; id < v.Size(); id++ {
				b := v.Token(id)
				if b == nil {
					continue
				}
				n++
				nd := v.tokNode[id]
				if nd < 0 || int(v.tDepth[nd]) != len(b) || v.tByte[nd] != b[len(b)-1] {
					t.Fatalf("token %d %q: bad node %d", id, b, nd)
				}
			}
			for _, e := range v.EOS() {
				if v.Token(int(e)) != nil {
					t.Errorf("eos %d has bytes", e)
				}
			}
			t.Logf("%d tokens, %d trie nodes, longest %d bytes", n, v.trieNodes(), v.maxLen)
		})
	}
}

func TestNewVocabErrors(t *testing.T) {
	if _, err := NewVocab([][]byte{[]byte("a")}, []int{3}); err == nil {
		t.Fatal("eos outside the vocabulary accepted")
	}
	v, err := NewVocab([][]byte{[]byte("a"), []byte("b"), []byte("a"), nil, []byte("ab")}, []int{3})
	if err != nil {
		t.Fatal(err)
	}
	g, err := Compile(Spec{Regex: "a+b?"}, v, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	m := g.NewMatcher()
	mask := make([]uint64, v.MaskWords())
	m.FillMask(mask)
	if mask[0] != 0b10101 { // a, a (duplicate bytes), ab
		t.Fatalf("mask %b", mask[0])
	}
	if err := m.Accept(2); err != nil {
		t.Fatal(err)
	}
	m.FillMask(mask)
	if mask[0] != 0b11111 { // a, b, a, eos, ab
		t.Fatalf("mask after a: %b", mask[0])
	}
}
