package tokenizer

import (
	"bytes"
	"container/heap"
	"fmt"
	"strings"
	"unicode/utf8"
)

// bpeModel is tokenizers' models::bpe::BPE without dropout.
type bpeModel struct {
	vocab   map[string]int // model vocabulary (added tokens excluded)
	idToTok []string       // id -> token; "" where no token has that id
	hasID   []bool

	// merges maps the pair (left id, right id) to rank<<32 | new id.
	merges map[uint64]uint64

	unkID        int // -1 when unk_token is unset
	fuseUnk      bool
	byteFallback bool
	ignoreMerges bool
	contPrefix   string // continuing_subword_prefix
	endSuffix    string // end_of_word_suffix

	// byteLevelID[b] is the id of the ByteLevel character for byte b (or -1):
	// lets byte-level words skip building the mapped string.
	byteLevelID [256]int32
	// fallbackID[b] is the id of "<0xNN>" (or -1).
	fallbackID [256]int32
}

const noMerge = ^uint64(0)

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

func newBPE(vocab map[string]int, mergesJSON []byte, unk *string, fuseUnk, byteFallback, ignoreMerges bool, contPrefix, endSuffix string) (*bpeModel, error) {
	m := &bpeModel{
		vocab:        vocab,
		unkID:        -1,
		fuseUnk:      fuseUnk,
		byteFallback: byteFallback,
		ignoreMerges: ignoreMerges,
		contPrefix:   contPrefix,
		endSuffix:    endSuffix,
	}
	maxID := -1
	for _, id := range vocab {
		if id > maxID {
			maxID = id
		}
	}
	if maxID >= 1<<24 {
		return nil, fmt.Errorf("%w: model.vocab: id %d is too large", ErrMalformed, maxID)
	}
	m.idToTok = make([]string, maxID+1)
	m.hasID = make([]bool, maxID+1)
	for tok, id := range vocab {
		m.idToTok[id] = tok
		m.hasID[id] = true
	}
	if unk != nil {
		id, ok := vocab[*unk]
		if !ok {
			// tokenizers fails at encode time; failing at load is clearer.
			return nil, fmt.Errorf("%w: model.unk_token %q is not in model.vocab", ErrMalformed, *unk)
		}
		m.unkID = id
	}
	if len(mergesJSON) > 0 {
		m.merges = make(map[uint64]uint64, len(vocab))
		var joined []byte
		_, err := parseMerges(mergesJSON, func(rank int, a, b []byte) error {
			ia, ok1 := vocab[string(a)]
			ib, ok2 := vocab[string(b)]
			if !ok1 || !ok2 {
				return fmt.Errorf("merges[%d]: token %q or %q is not in model.vocab", rank, a, b)
			}
			if contPrefix != "" {
				b = bytes.TrimPrefix(b, []byte(contPrefix))
			}
			joined = append(append(joined[:0], a...), b...)
			nid, ok := vocab[string(joined)]
			if !ok {
				return fmt.Errorf("merges[%d]: merged token %q is not in model.vocab", rank, joined)
			}
			// Later duplicates overwrite earlier ones, as in tokenizers' HashMap.
			m.merges[pairKey(int32(ia), int32(ib))] = uint64(rank)<<32 | uint64(uint32(nid))
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("%w: model.merges: %v", ErrMalformed, err)
		}
	}
	for b := 0; b < 256; b++ {
		m.byteLevelID[b] = -1
		if id, ok := vocab[string(byteToRune[b])]; ok {
			m.byteLevelID[b] = int32(id)
		}
		m.fallbackID[b] = -1
		if id, ok := vocab[fmt.Sprintf("<0x%02X>", b)]; ok {
			m.fallbackID[b] = int32(id)
		}
	}
	return m, nil
}

func (m *bpeModel) lookup(a, b int32) (rank uint32, id int32, ok bool) {
	v, ok := m.merges[pairKey(a, b)]
	if !ok {
		return 0, 0, false
	}
	return uint32(v >> 32), int32(uint32(v)), true
}

// initialByteLevel appends the starting symbols for a word whose characters
// are the ByteLevel images of raw bytes.
func (m *bpeModel) initialByteLevel(word string, syms []int32) []int32 {
	if m.contPrefix == "" && m.endSuffix == "" {
		n := len(syms)
		i := 0
		for ; i < len(word); i++ {
			id := m.byteLevelID[word[i]]
			if id < 0 {
				break
			}
			syms = append(syms, id)
		}
		if i == len(word) {
			return syms
		}
		syms = syms[:n]
	}
	// Rare: a byte's character is missing or affixes apply; take the
	// general path on the mapped string.
	return m.initialChars(byteLevelString(word), syms)
}

// initialChars mirrors BPE::merge_word's first loop: one symbol per char,
// prefix/suffix applied, byte fallback, then unk (fused if asked).
func (m *bpeModel) initialChars(word string, syms []int32) []int32 {
	pendingUnk := false // an unk waits to be appended (tokenizers' `unk` Option)
	var sb strings.Builder
	for i := 0; i < len(word); {
		_, size := utf8.DecodeRuneInString(word[i:])
		s := word[i : i+size]
		if (i > 0 && m.contPrefix != "") || (i+size == len(word) && m.endSuffix != "") {
			sb.Reset()
			if i > 0 {
				sb.WriteString(m.contPrefix)
			}
			sb.WriteString(s)
			if i+size == len(word) {
				sb.WriteString(m.endSuffix)
			}
			s = sb.String()
		}
		i += size
		if id, ok := m.vocab[s]; ok {
			if pendingUnk {
				syms = append(syms, int32(m.unkID))
				pendingUnk = false
			}
			syms = append(syms, int32(id))
			continue
		}
		if m.byteFallback {
			okAll := true
			for j := 0; j < len(s); j++ {
				if m.fallbackID[s[j]] < 0 {
					okAll = false
					break
				}
			}
			if okAll {
				// tokenizers keeps a pending unk across byte fallbacks.
				for j := 0; j < len(s); j++ {
					syms = append(syms, m.fallbackID[s[j]])
				}
				continue
			}
		}
		if m.unkID >= 0 {
			if pendingUnk && !m.fuseUnk {
				syms = append(syms, int32(m.unkID))
			}
			pendingUnk = true
		}
	}
	if pendingUnk {
		syms = append(syms, int32(m.unkID))
	}
	return syms
}

// mergeAll applies merges, lowest rank first and leftmost on ties, exactly
// like tokenizers' Word::merge_all. It returns the merged symbols (in place).
func (m *bpeModel) mergeAll(syms []int32, ws *workspace) []int32 {
	n := len(syms)
	if n < 2 {
		return syms
	}
	if n > 64 {
		return m.mergeHeap(syms, ws)
	}
	// Small words: O(n^2) scan over the pair ranks beats a heap.
	ranks := ws.ranks[:0]
	for i := 0; i+1 < n; i++ {
		v, ok := m.merges[pairKey(syms[i], syms[i+1])]
		if !ok {
			v = noMerge
		}
		ranks = append(ranks, v)
	}
	for {
		best := -1
		bestRank := noMerge
		for i, v := range ranks {
			if v < bestRank {
				bestRank, best = v, i
			}
		}
		if best < 0 {
			break
		}
		syms[best] = int32(uint32(bestRank))
		copy(syms[best+1:], syms[best+2:])
		syms = syms[:len(syms)-1]
		copy(ranks[best:], ranks[best+1:])
		ranks = ranks[:len(ranks)-1]
		if best > 0 {
			v, ok := m.merges[pairKey(syms[best-1], syms[best])]
			if !ok {
				v = noMerge
			}
			ranks[best-1] = v
		}
		if best < len(ranks) {
			v, ok := m.merges[pairKey(syms[best], syms[best+1])]
			if !ok {
				v = noMerge
			}
			ranks[best] = v
		}
	}
	ws.ranks = ranks
	return syms
}

type mergeItem struct {
	rank uint32
	pos  int32
	id   int32
}

type mergeHeapQ []mergeItem

func (h mergeHeapQ) Len() int { return len(h) }
func (h mergeHeapQ) Less(i, j int) bool {
	if h[i].rank != h[j].rank {
		return h[i].rank < h[j].rank
	}
	return h[i].pos < h[j].pos
}
func (h mergeHeapQ) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *mergeHeapQ) Push(x any)   { *h = append(*h, x.(mergeItem)) }
func (h *mergeHeapQ) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// mergeHeap is the linked-list + priority queue form for long words.
func (m *bpeModel) mergeHeap(syms []int32, ws *workspace) []int32 {
	n := len(syms)
	prev := make([]int32, n)
	next := make([]int32, n)
	alive := make([]bool, n)
	for i := range syms {
		prev[i] = int32(i - 1)
		next[i] = int32(i + 1)
		alive[i] = true
	}
	next[n-1] = -1
	q := mergeHeapQ(ws.heap[:0])
	for i := 0; i+1 < n; i++ {
		if r, id, ok := m.lookup(syms[i], syms[i+1]); ok {
			q = append(q, mergeItem{r, int32(i), id})
		}
	}
	heap.Init(&q)
	for q.Len() > 0 {
		top := heap.Pop(&q).(mergeItem)
		p := top.pos
		if !alive[p] || next[p] < 0 {
			continue
		}
		nx := next[p]
		// Skip stale entries: the pair at p must still produce this id.
		if _, id, ok := m.lookup(syms[p], syms[nx]); !ok || id != top.id {
			continue
		}
		syms[p] = top.id
		alive[nx] = false
		next[p] = next[nx]
		if next[nx] >= 0 {
			prev[next[nx]] = p
		}
		if pp := prev[p]; pp >= 0 {
			if r, id, ok := m.lookup(syms[pp], syms[p]); ok {
				heap.Push(&q, mergeItem{r, pp, id})
			}
		}
		if nn := next[p]; nn >= 0 {
			if r, id, ok := m.lookup(syms[p], syms[nn]); ok {
				heap.Push(&q, mergeItem{r, p, id})
			}
		}
	}
	ws.heap = q[:0]
	out := syms[:0]
	for i := 0; i < n; i++ {
		if alive[i] {
			out = append(out, syms[i])
		}
	}
	return out
}
