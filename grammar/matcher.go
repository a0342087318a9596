package grammar

import "fmt"

// Matcher follows one generation through a grammar. It is not safe for
// concurrent use; make one per sequence with Grammar.NewMatcher.
type Matcher struct {
	g    *Grammar
	w    *walker // runs on the matcher's own stacks; its arena is theirs
	mw   *walker // scratch for computing state masks
	cur  config
	hist []config // configurations before the last accepted tokens
	live int      // arena nodes alive after the last compaction

	// MaxRollback is how many accepted tokens Rollback can undo (default 32).
	maxRollback int
	remap       []int32
}

type config struct {
	tops       []int32
	end        bool // the grammar may be complete here
	terminated bool // an end-of-generation token was accepted
}

// NewMatcher returns a matcher at the start of the grammar.
func (g *Grammar) NewMatcher() *Matcher {
	m := &Matcher{g: g, w: newWalker(g), mw: newWalker(g), maxRollback: 32}
	m.w.closeStart()
	m.cur = config{tops: append([]int32(nil), m.w.lastTops()...), end: m.w.lv[0].end}
	m.live = len(m.w.nodes)
	return m
}

// SetMaxRollback sets how many tokens Rollback can undo.
func (m *Matcher) SetMaxRollback(n int) {
	m.maxRollback = n
	if len(m.hist) > n {
		m.hist = m.hist[len(m.hist)-n:]
	}
}

// CanEnd reports whether the output so far is complete, so an
// end-of-generation token is allowed.
func (m *Matcher) CanEnd() bool { return m.cur.end && !m.cur.terminated }

// MustEnd reports whether the output is complete and nothing may follow.
func (m *Matcher) MustEnd() bool { return m.cur.end && len(m.cur.tops) == 0 }

// IsTerminated reports whether an end-of-generation token was accepted.
func (m *Matcher) IsTerminated() bool { return m.cur.terminated }

// Accept advances by one token. A token the grammar does not allow here
// returns an error wrapping ErrRejected and leaves the matcher unchanged.
func (m *Matcher) Accept(token int) error {
	v := m.g.vocab
	if m.cur.terminated || token < 0 || token >= v.n {
		return fmt.Errorf("%w: token %d", ErrRejected, token)
	}
	if v.isEOS[token] {
		if !m.cur.end {
			return fmt.Errorf("%w: end of generation before the grammar is complete", ErrRejected)
		}
		m.save()
		m.cur = config{end: true, terminated: true}
		return nil
	}
	b := v.toks[token]
	if b == nil {
		return fmt.Errorf("%w: special token %d", ErrRejected, token)
	}
	if !m.advance(b) {
		return fmt.Errorf("%w: token %d %q", ErrRejected, token, b)
	}
	return nil
}

// AcceptString advances by raw bytes, whatever their tokenization; it is
// all or nothing.
func (m *Matcher) AcceptString(s string) error {
	if m.cur.terminated {
		return fmt.Errorf("%w: already terminated", ErrRejected)
	}
	if !m.advance([]byte(s)) {
		return fmt.Errorf("%w: %q", ErrRejected, s)
	}
	return nil
}

func (m *Matcher) advance(b []byte) bool {
	w := m.w
	w.start(m.cur.tops)
	for _, c := range b {
		if !w.push(c) {
			w.truncate(0)
			return false
		}
	}
	m.save()
	last := w.lv[len(w.lv)-1]
	if len(b) == 0 {
		return true
	}
	m.cur = config{tops: append([]int32(nil), w.lastTops()...), end: last.end}
	if len(w.nodes) > 4*m.live+4096 {
		m.compact()
	}
	return true
}

func (m *Matcher) save() {
	if m.maxRollback <= 0 {
		return
	}
	if len(m.hist) >= m.maxRollback {
		copy(m.hist, m.hist[1:])
		m.hist = m.hist[:len(m.hist)-1]
	}
	m.hist = append(m.hist, m.cur)
}

// Rollback undoes the last n accepted tokens (or AcceptString calls).
func (m *Matcher) Rollback(n int) error {
	if n < 0 || n > len(m.hist) {
		return fmt.Errorf("%w: %d of %d", ErrRollback, n, len(m.hist))
	}
	if n == 0 {
		return nil
	}
	m.cur = m.hist[len(m.hist)-n]
	m.hist = m.hist[:len(m.hist)-n]
	return nil
}

// Reset returns the matcher to the start of the grammar.
func (m *Matcher) Reset() {
	m.w.closeStart()
	m.cur = config{tops: append([]int32(nil), m.w.lastTops()...), end: m.w.lv[0].end}
	m.hist = m.hist[:0]
	m.live = len(m.w.nodes)
}

// compact copies the nodes that the current and saved configurations
// reach into a fresh arena; stepping leaves garbage behind.
func (m *Matcher) compact() {
	old := m.w.nodes
	if cap(m.remap) < len(old) {
		m.remap = make([]int32, len(old))
	}
	remap := m.remap[:len(old)]
	for i := range remap {
		remap[i] = -1
	}
	nodes := make([]node, 0, len(old)/4+16)
	var copyNode func(id int32) int32
	copyNode = func(id int32) int32 {
		if id < 0 {
			return id
		}
		if remap[id] >= 0 {
			return remap[id]
		}
		p := copyNode(old[id].parent)
		nodes = append(nodes, node{old[id].gid, p})
		remap[id] = int32(len(nodes) - 1)
		return remap[id]
	}
	fix := func(c *config) {
		for i, t := range c.tops {
			c.tops[i] = copyNode(t)
		}
	}
	// Saved configurations may share tops slices; copy before rewriting.
	for i := range m.hist {
		m.hist[i].tops = append([]int32(nil), m.hist[i].tops...)
		fix(&m.hist[i])
	}
	fix(&m.cur)
	m.w.nodes = nodes
	m.live = len(nodes)
}

// FillMask sets in mask (a bitset over token ids, at least
// Vocab.MaskWords() words; longer is fine) exactly the tokens allowed
// next, end-of-generation ids included when the grammar is complete.
func (m *Matcher) FillMask(mask []uint64) {
	clear(mask)
	if m.cur.terminated {
		return
	}
	g := m.g
	for _, top := range m.cur.tops {
		sm := g.mask(m.w.nodes[top].gid, m.mw)
		sm.fill(mask)
		if len(sm.unc) > 0 {
			m.checkUncertain(top, sm, mask)
		}
	}
	if m.cur.end {
		for _, t := range g.vocab.eos {
			mask[t>>6] |= 1 << (t & 63)
		}
	}
}

// checkUncertain runs a state's uncertain tokens from the real stack top,
// reusing each token's shared prefix with the one before.
func (m *Matcher) checkUncertain(top int32, sm *stateMask, mask []uint64) {
	v := m.g.vocab
	w := m.w
	w.start([]int32{top})
	failAt := int32(1 << 30)
	for k, t := range sm.unc {
		l := sm.lcp[k]
		if l >= failAt {
			continue
		}
		failAt = 1 << 30
		w.truncate(int(l))
		b := v.toks[t]
		ok := true
		for d := w.depth(); d < len(b); d++ {
			if !w.push(b[d]) {
				failAt = int32(d + 1)
				ok = false
				break
			}
		}
		if ok {
			mask[t>>6] |= 1 << (t & 63)
		}
	}
	w.truncate(0)
}
