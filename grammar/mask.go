package grammar

import "math/bits"

// stateMask is what a stack top in one state allows, whatever lies below
// it: tokens accepted inside the state's rule (and rules it calls), and
// uncertain tokens that may only fit by leaving the rule, checked against
// the real stack on each step. It is computed once per state and grammar
// (xgrammar's adaptive token mask cache).
type stateMask struct {
	dense []uint64 // accepted tokens as a bitset, or nil when few
	list  []int32  // accepted tokens when few
	unc   []int32  // uncertain tokens in trie order
	lcp   []int32  // bytes unc[k] shares with unc[k-1]
}

// denseShare: above vocab/denseShare accepted tokens a bitset is smaller
// and faster to merge than a list.
const denseShare = 32

func (g *Grammar) mask(gid int32, w *walker) *stateMask {
	if p := g.masks[gid].Load(); p != nil {
		return p
	}
	sm := g.computeMask(gid, w)
	size := sm.bytes()
	if g.maskBytes.Add(size) > g.maxMask {
		// Over budget: use it this once.
		g.maskBytes.Add(-size)
		return sm
	}
	if !g.masks[gid].CompareAndSwap(nil, sm) {
		g.maskBytes.Add(-size) // another matcher stored it first
	}
	return g.masks[gid].Load()
}

func (sm *stateMask) bytes() int64 {
	return int64(8*len(sm.dense) + 4*(len(sm.list)+len(sm.unc)+len(sm.lcp)) + 96)
}

// MaskCacheBytes is the memory the grammar's kept token masks take.
func (g *Grammar) MaskCacheBytes() int64 { return g.maskBytes.Load() }

// computeMask walks the whole token trie from a stack holding only gid,
// skipping subtrees no stack survives. While the walk stays inside gid's
// rule without calls (string contents, digits: most of the trie), a
// prefix's configuration is a single state, kept per depth in simple;
// below the first depth that needs more, the walker takes over.
func (g *Grammar) computeMask(gid int32, w *walker) *stateMask {
	v := g.vocab
	// Accepted tokens go straight into a bitset (turned into a list at
	// the end when few); uncertain ones into a list in trie order.
	acc := make([]uint64, v.MaskWords())
	nacc := 0
	var unc []int32
	accept := func(t int32) {
		for ; t >= 0; t = v.dupNext[t] {
			acc[t>>6] |= 1 << (t & 63)
			nacc++
		}
	}
	subtree := func(from, to int32) {
		for j := from; j < to; j++ {
			if t := v.tTok[j]; t >= 0 {
				unc = v.appendDups(unc, t)
			}
		}
	}
	// simple[d], cum[d]: the single state after d bytes and whether the
	// rule could have ended by then, valid for d <= sdepth; row and cmap
	// cache the state's transition row and byte classes.
	simple := make([]int32, v.maxLen+1)
	row := make([]int32, v.maxLen+1)
	cmap := make([]*[256]uint8, v.maxLen+1)
	cum := make([]bool, v.maxLen+1)
	setSimple := func(d int, s int32, c bool) {
		simple[d], cum[d] = s, c
		row[d], cmap[d] = g.stTrans[s], &g.classMaps[g.stClass[s]]
	}
	setSimple(0, gid, false)
	// A state of a root rule that nothing calls sits on the real bottom:
	// its rule's end completes the output, and no token can go past it,
	// so none is uncertain.
	bottom := bottomCtx
	if g.stRule[gid] == g.stRule[g.root] && !g.rootCalled {
		bottom = bottomRoot
	}
	sdepth := 0
	wbase := -1 // trie depth of the walker's level 0, -1: walker unused
	for i := int32(0); i < int32(len(v.tByte)); {
		d := int(v.tDepth[i])
		if d-1 <= sdepth {
			// The parent is a simple level.
			wbase = -1
			sdepth = d - 1
			s := g.trans[row[d-1]+int32(cmap[d-1][v.tByte[i]])]
			if s < 0 {
				if cum[d-1] {
					subtree(i, v.tNext[i])
				}
				i = v.tNext[i]
				continue
			}
			f := g.flags[s]
			if f&fCalls == 0 {
				if t := v.tTok[i]; t >= 0 {
					accept(t)
				}
				c := cum[d-1] || (f&fFinal != 0 && bottom == bottomCtx)
				if f&fBytes == 0 {
					if c {
						subtree(i+1, v.tNext[i])
					}
					i = v.tNext[i]
					continue
				}
				if v.tNext[i] > i+1 { // a leaf needs no level
					setSimple(d, s, c)
					sdepth = d
				}
				i++
				continue
			}
			// Calls ahead: hand over to the walker from depth d-1.
			w.nodes = append(w.nodes[:0], node{simple[d-1], bottom})
			w.start([]int32{0})
			w.lv[0].cum = cum[d-1]
			wbase = d - 1
		}
		w.truncate(d - 1 - wbase)
		parentCum := w.lv[d-1-wbase].cum
		if !w.push(v.tByte[i]) {
			if parentCum {
				subtree(i, v.tNext[i])
			}
			i = v.tNext[i]
			continue
		}
		if t := v.tTok[i]; t >= 0 {
			accept(t)
		}
		if len(w.lastTops()) == 0 {
			if w.lv[d-wbase].cum {
				subtree(i+1, v.tNext[i])
			}
			i = v.tNext[i]
			continue
		}
		i++
	}
	sm := &stateMask{unc: unc}
	switch {
	case nacc > v.n/denseShare:
		sm.dense = acc
	case nacc > 0:
		sm.list = make([]int32, 0, nacc)
		for wi, x := range acc {
			for x != 0 {
				sm.list = append(sm.list, int32(wi*64+bits.TrailingZeros64(x)))
				x &= x - 1
			}
		}
	}
	if len(unc) > 0 {
		sm.lcp = make([]int32, len(unc))
		for k := 1; k < len(unc); k++ {
			a, b := v.toks[unc[k-1]], v.toks[unc[k]]
			l := 0
			for l < len(a) && l < len(b) && a[l] == b[l] {
				l++
			}
			sm.lcp[k] = int32(l)
		}
	}
	return sm
}

// appendDups appends t and the ids with the same bytes.
func (v *Vocab) appendDups(dst []int32, t int32) []int32 {
	for ; t >= 0; t = v.dupNext[t] {
		dst = append(dst, t)
	}
	return dst
}

// fill ORs the accepted tokens into mask.
func (sm *stateMask) fill(mask []uint64) {
	if sm.dense != nil {
		for i, x := range sm.dense {
			mask[i] |= x
		}
		return
	}
	for _, t := range sm.list {
		mask[t>>6] |= 1 << (t & 63)
	}
}
