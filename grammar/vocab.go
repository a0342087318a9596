package grammar

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/llmserve/llmserve/tokenizer"
)

// Vocab is a tokenizer's vocabulary as a matcher sees it: the bytes each
// token id adds to the output, which ids end generation, and a trie of the
// token byte strings that mask computation walks. Build it once per
// tokenizer and share it; it is immutable.
type Vocab struct {
	n     int
	toks  [][]byte // nil: never allowed by a grammar (special tokens)
	eos   []int32
	isEOS []bool

	// The trie in depth-first preorder (root left out): node i holds byte
	// tByte[i] at depth tDepth[i] (1 for the first byte), its subtree ends
	// before tNext[i], and tTok[i] is a token ending there or -1; tokens
	// with the same bytes as another are chained in dupNext.
	tByte   []byte
	tDepth  []int32
	tNext   []int32
	tTok    []int32
	dupNext []int32 // per token id: next id with the same bytes, -1
	tokNode []int32 // per token id: its trie node, -1
	maxLen  int
}

// NewVocab builds a vocabulary from each id's bytes (nil or empty: the id is
// never allowed, as for special tokens) and the end-of-generation ids, which
// a matcher allows once the grammar is complete.
func NewVocab(tokens [][]byte, eos []int) (*Vocab, error) {
	v := &Vocab{n: len(tokens), toks: make([][]byte, len(tokens)), isEOS: make([]bool, len(tokens))}
	for _, id := range eos {
		if id < 0 || id >= len(tokens) {
			return nil, fmt.Errorf("grammar: eos id %d outside the vocabulary of %d", id, len(tokens))
		}
		if !v.isEOS[id] {
			v.isEOS[id] = true
			v.eos = append(v.eos, int32(id))
		}
	}
	ids := make([]int32, 0, len(tokens))
	for i, t := range tokens {
		if len(t) > 0 && !v.isEOS[i] {
			ids = append(ids, int32(i))
			v.toks[i] = t
		}
	}
	slices.SortFunc(ids, func(a, b int32) int {
		if c := bytes.Compare(tokens[a], tokens[b]); c != 0 {
			return c
		}
		return int(a - b)
	})
	v.dupNext = make([]int32, len(tokens))
	v.tokNode = make([]int32, len(tokens))
	for i := range v.dupNext {
		v.dupNext[i], v.tokNode[i] = -1, -1
	}
	var path []int32 // trie node at each depth-1 of the current branch
	var prev []byte
	for _, id := range ids {
		t := tokens[id]
		v.maxLen = max(v.maxLen, len(t))
		l := 0
		for l < len(prev) && l < len(t) && prev[l] == t[l] {
			l++
		}
		if l == len(t) && l == len(prev) {
			// Same bytes as the previous token: chain it.
			first := v.tTok[path[l-1]]
			for v.dupNext[first] >= 0 {
				first = v.dupNext[first]
			}
			v.dupNext[first] = id
			v.tokNode[id] = path[l-1]
			continue
		}
		// Close the nodes below the common prefix.
		for len(path) > l {
			v.tNext[path[len(path)-1]] = int32(len(v.tByte))
			path = path[:len(path)-1]
		}
		for d := l; d < len(t); d++ {
			path = append(path, int32(len(v.tByte)))
			v.tByte = append(v.tByte, t[d])
			v.tDepth = append(v.tDepth, int32(d+1))
			v.tNext = append(v.tNext, 0)
			v.tTok = append(v.tTok, -1)
		}
		v.tTok[path[len(t)-1]] = id
		v.tokNode[id] = path[len(t)-1]
		prev = t
	}
	for _, nd := range path {
		v.tNext[nd] = int32(len(v.tByte))
	}
	return v, nil
}

// VocabFromTokenizer builds the vocabulary of a tokenizer: every id's
// TokenBytes, except special tokens (never produced under a grammar) and
// the tokenizer's EOS ids (allowed when the grammar is complete).
func VocabFromTokenizer(t *tokenizer.Tokenizer) (*Vocab, error) {
	toks := make([][]byte, t.VocabSize())
	for id := range toks {
		if t.IsSpecial(id) {
			continue
		}
		if b, ok := t.TokenBytes(id); ok {
			toks[id] = b
		}
	}
	return NewVocab(toks, t.EOSTokenIDs())
}

// Size is the number of token ids.
func (v *Vocab) Size() int { return v.n }

// EOS returns the end-of-generation ids.
func (v *Vocab) EOS() []int32 { return slices.Clone(v.eos) }

// Token returns the bytes of id (nil for a special or unknown id).
func (v *Vocab) Token(id int) []byte {
	if id < 0 || id >= v.n {
		return nil
	}
	return v.toks[id]
}

// MaskWords is the length of a token bitset for this vocabulary.
func (v *Vocab) MaskWords() int { return (v.n + 63) / 64 }

// trieNodes is the number of trie nodes (a measure of mask walk cost).
func (v *Vocab) trieNodes() int { return len(v.tByte) }
