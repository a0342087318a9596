package grammar

import (
	"fmt"
	"slices"
	"time"
	"unsafe"
)

// budget carries the limits and the deadline through a compilation.
type budget struct {
	lim      Limits
	deadline time.Time
	ticks    int
}

func newBudget(lim Limits) *budget {
	return &budget{lim: lim, deadline: time.Now().Add(lim.CompileTimeout)}
}

// tick is called in every loop that grows with the input; it checks the
// clock once in a while.
func (b *budget) tick() error {
	b.ticks++
	if b.ticks&1023 == 0 && time.Now().After(b.deadline) {
		return fmt.Errorf("%w: compilation took longer than %v (%w)", ErrLimit, b.lim.CompileTimeout, errTimeout)
	}
	return nil
}

// ------------------------------------------------------------------ NFA

// nfa is a Thompson automaton over bytes with epsilon moves and calls.
type nfa struct {
	st []nstate
	b  *budget
}

type nstate struct {
	eps   []int32
	bytes []bedge
	calls []cedge
}

type bedge struct {
	lo, hi byte
	to     int32
}

// cedge calls rule and continues at to when the rule has matched.
type cedge struct{ rule, to int32 }

func (n *nfa) add() (int32, error) {
	if len(n.st) >= n.b.lim.MaxNFAStates {
		return 0, errorf(ErrLimit, "more than %d automaton states in one rule", n.b.lim.MaxNFAStates)
	}
	if err := n.b.tick(); err != nil {
		return 0, err
	}
	n.st = append(n.st, nstate{})
	return int32(len(n.st) - 1), nil
}

func (n *nfa) eps(a, b int32) { n.st[a].eps = append(n.st[a].eps, b) }

// build adds a fragment for e and returns its entry and exit states.
func (n *nfa) build(e expr) (s, f int32, err error) {
	switch e := e.(type) {
	case eLit:
		if s, err = n.add(); err != nil {
			return
		}
		f = s
		for i := 0; i < len(e); i++ {
			nx, err := n.add()
			if err != nil {
				return 0, 0, err
			}
			n.st[f].bytes = append(n.st[f].bytes, bedge{e[i], e[i], nx})
			f = nx
		}
		return s, f, nil
	case eClass:
		if s, err = n.add(); err != nil {
			return
		}
		if f, err = n.add(); err != nil {
			return
		}
		for _, r := range e.ranges {
			if e.bytes {
				n.st[s].bytes = append(n.st[s].bytes, bedge{byte(r.lo), byte(r.hi), f})
				continue
			}
			utf8Seqs(r, func(sq [][2]byte) {
				if err != nil {
					return
				}
				cur := s
				for i, br := range sq {
					nx := f
					if i < len(sq)-1 {
						if nx, err = n.add(); err != nil {
							return
						}
					}
					n.st[cur].bytes = append(n.st[cur].bytes, bedge{br[0], br[1], nx})
					cur = nx
				}
			})
		}
		return s, f, err
	case eSeq:
		if s, err = n.add(); err != nil {
			return
		}
		f = s
		for _, p := range e {
			ps, pf, err := n.build(p)
			if err != nil {
				return 0, 0, err
			}
			n.eps(f, ps)
			f = pf
		}
		return s, f, nil
	case eAlt:
		if s, err = n.add(); err != nil {
			return
		}
		if f, err = n.add(); err != nil {
			return
		}
		for _, p := range e {
			ps, pf, err := n.build(p)
			if err != nil {
				return 0, 0, err
			}
			n.eps(s, ps)
			n.eps(pf, f)
		}
		return s, f, nil
	case eRep:
		if e.min > n.b.lim.MaxRepeat || e.max > n.b.lim.MaxRepeat {
			return 0, 0, errorf(ErrLimit, "repetition count %d over %d", max(e.min, e.max), n.b.lim.MaxRepeat)
		}
		if e.max >= 0 && e.max < e.min {
			return 0, 0, errorf(ErrSyntax, "repetition {%d,%d}: max below min", e.min, e.max)
		}
		if s, err = n.add(); err != nil {
			return
		}
		cur := s
		for i := 0; i < e.min; i++ {
			ps, pf, err := n.build(e.e)
			if err != nil {
				return 0, 0, err
			}
			n.eps(cur, ps)
			cur = pf
		}
		if f, err = n.add(); err != nil {
			return
		}
		if e.max < 0 {
			ps, pf, err := n.build(e.e)
			if err != nil {
				return 0, 0, err
			}
			n.eps(cur, ps)
			n.eps(pf, cur)
			n.eps(cur, f)
			return s, f, nil
		}
		for i := e.min; i < e.max; i++ {
			ps, pf, err := n.build(e.e)
			if err != nil {
				return 0, 0, err
			}
			n.eps(cur, ps)
			n.eps(cur, f)
			cur = pf
		}
		n.eps(cur, f)
		return s, f, nil
	case eRef:
		if s, err = n.add(); err != nil {
			return
		}
		if f, err = n.add(); err != nil {
			return
		}
		n.st[s].calls = append(n.st[s].calls, cedge{int32(e), f})
		return s, f, nil
	case eAnd, eDiff:
		var a, b expr
		isAnd := false
		if x, ok := e.(eAnd); ok {
			a, b, isAnd = x.a, x.b, true
		} else {
			x := e.(eDiff)
			a, b = x.a, x.b
		}
		da, err := compileRegular(a, n.b)
		if err != nil {
			return 0, 0, err
		}
		db, err := compileRegular(b, n.b)
		if err != nil {
			return 0, 0, err
		}
		d, err := product(da, db, isAnd, n.b)
		if err != nil {
			return 0, 0, err
		}
		return n.embed(d)
	case eDFA:
		return n.embed(e.d)
	case eList:
		return n.buildList(e)
	}
	panic("grammar: unknown expression")
}

// buildList builds an eList through two hubs per item boundary: a, where
// nothing was matched yet, and b, after at least one item (so a separator
// comes first). -1 is a hub that cannot be reached.
func (n *nfa) buildList(l eList) (s, f int32, err error) {
	if s, err = n.add(); err != nil {
		return
	}
	// occurrence builds [sep] e from state from and returns its exit.
	occurrence := func(from int32, e expr, withSep bool) (int32, error) {
		cur := from
		if withSep {
			ss, sf, err := n.build(l.sep)
			if err != nil {
				return 0, err
			}
			n.eps(cur, ss)
			cur = sf
		}
		es, ef, err := n.build(e)
		if err != nil {
			return 0, err
		}
		n.eps(cur, es)
		return ef, nil
	}
	a, b := s, int32(-1)
	for _, it := range l.items {
		if it.min > n.b.lim.MaxRepeat || it.max > n.b.lim.MaxRepeat {
			return 0, 0, errorf(ErrLimit, "repetition count %d over %d", max(it.min, it.max), n.b.lim.MaxRepeat)
		}
		if it.max == 0 {
			continue
		}
		nb, err := n.add()
		if err != nil {
			return 0, 0, err
		}
		na := int32(-1)
		if it.min == 0 {
			na = a
			if b >= 0 {
				n.eps(b, nb)
			}
		}
		// c: after k occurrences of this item.
		c, err := n.add()
		if err != nil {
			return 0, 0, err
		}
		for _, from := range [2]int32{a, b} {
			if from < 0 {
				continue
			}
			x, err := occurrence(from, it.e, from == b)
			if err != nil {
				return 0, 0, err
			}
			n.eps(x, c)
		}
		k := 1
		target := it.max
		if it.max < 0 {
			target = max(it.min, 1)
		}
		for {
			if k >= it.min {
				n.eps(c, nb)
			}
			if k >= target {
				break
			}
			x, err := occurrence(c, it.e, true)
			if err != nil {
				return 0, 0, err
			}
			if c, err = n.add(); err != nil {
				return 0, 0, err
			}
			n.eps(x, c)
			k++
		}
		if it.max < 0 {
			x, err := occurrence(c, it.e, true)
			if err != nil {
				return 0, 0, err
			}
			n.eps(x, c)
		}
		a, b = na, nb
	}
	if f, err = n.add(); err != nil {
		return
	}
	if a >= 0 && !l.nonEmpty {
		n.eps(a, f)
	}
	if b >= 0 {
		n.eps(b, f)
	}
	return s, f, nil
}

// embed copies a DFA into the NFA.
func (n *nfa) embed(d *dfa) (s, f int32, err error) {
	base := int32(len(n.st))
	for range d.st {
		if _, err = n.add(); err != nil {
			return
		}
	}
	if f, err = n.add(); err != nil {
		return
	}
	for i, ds := range d.st {
		ns := &n.st[base+int32(i)]
		for _, r := range ds.ranges {
			ns.bytes = append(ns.bytes, bedge{r.lo, r.hi, base + r.to})
		}
		for _, c := range ds.calls {
			ns.calls = append(ns.calls, cedge{c.rule, base + c.to})
		}
		if ds.final {
			ns.eps = append(ns.eps, f)
		}
	}
	return base, f, nil
}

// compileRegular builds the minimal DFA of a call-free expression.
func compileRegular(e expr, b *budget) (*dfa, error) {
	n := &nfa{b: b}
	s, f, err := n.build(e)
	if err != nil {
		return nil, err
	}
	d, err := n.determinize(s, f)
	if err != nil {
		return nil, err
	}
	for _, st := range d.st {
		if len(st.calls) > 0 {
			return nil, errorf(ErrUnsupported, "intersection or exclusion over a recursive rule")
		}
	}
	d.trim(nil)
	return d.minimize(), nil
}

// ------------------------------------------------------------------ DFA

// dfa is deterministic over bytes and calls: from a state at most one move
// per byte and per called rule. State 0 is the start.
type dfa struct {
	st []dstate
}

type dstate struct {
	final  bool
	ranges []bedge // sorted, disjoint
	calls  []cedge // sorted by rule, one per rule
}

// determinize runs the subset construction from s; f is the accepting state.
func (n *nfa) determinize(s, f int32) (*dfa, error) {
	d := &dfa{}
	index := map[string]int32{}
	var sets [][]int32
	mark := make([]uint32, len(n.st))
	gen := uint32(0)
	var stack []int32
	closure := func(seeds []int32) []int32 {
		gen++
		stack = append(stack[:0], seeds...)
		var out []int32
		for _, x := range seeds {
			mark[x] = gen
		}
		for len(stack) > 0 {
			x := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			out = append(out, x)
			for _, y := range n.st[x].eps {
				if mark[y] != gen {
					mark[y] = gen
					stack = append(stack, y)
				}
			}
		}
		// Only states with moves (or the final one) tell sets apart.
		k := out[:0]
		for _, x := range out {
			if x == f || len(n.st[x].bytes) > 0 || len(n.st[x].calls) > 0 {
				k = append(k, x)
			}
		}
		slices.Sort(k)
		return k
	}
	intern := func(set []int32) (int32, error) {
		key := setKey(set)
		if id, ok := index[key]; ok {
			return id, nil
		}
		if len(d.st) >= n.b.lim.MaxStates {
			return 0, errorf(ErrLimit, "more than %d automaton states", n.b.lim.MaxStates)
		}
		id := int32(len(d.st))
		index[key] = id
		sets = append(sets, set)
		d.st = append(d.st, dstate{final: slices.Contains(set, f)})
		return id, nil
	}
	if _, err := intern(closure([]int32{s})); err != nil {
		return nil, err
	}
	var pts []int
	var tgt []int32
	for i := 0; i < len(d.st); i++ {
		if err := n.b.tick(); err != nil {
			return nil, err
		}
		set := sets[i]
		// Byte moves: split the byte axis at every edge boundary.
		pts = pts[:0]
		for _, x := range set {
			for _, e := range n.st[x].bytes {
				pts = append(pts, int(e.lo), int(e.hi)+1)
			}
		}
		slices.Sort(pts)
		pts = slices.Compact(pts)
		var ranges []bedge
		for k := 0; k+1 < len(pts); k++ {
			lo, hi := pts[k], pts[k+1]-1
			tgt = tgt[:0]
			for _, x := range set {
				for _, e := range n.st[x].bytes {
					if int(e.lo) <= lo && hi <= int(e.hi) {
						tgt = append(tgt, e.to)
					}
				}
			}
			if len(tgt) == 0 {
				continue
			}
			id, err := intern(closure(tgt))
			if err != nil {
				return nil, err
			}
			if m := len(ranges); m > 0 && ranges[m-1].to == id && int(ranges[m-1].hi)+1 == lo {
				ranges[m-1].hi = byte(hi)
				continue
			}
			ranges = append(ranges, bedge{byte(lo), byte(hi), id})
		}
		// Calls: one move per called rule.
		var rules []int32
		for _, x := range set {
			for _, c := range n.st[x].calls {
				rules = append(rules, c.rule)
			}
		}
		slices.Sort(rules)
		rules = slices.Compact(rules)
		var calls []cedge
		for _, r := range rules {
			tgt = tgt[:0]
			for _, x := range set {
				for _, c := range n.st[x].calls {
					if c.rule == r {
						tgt = append(tgt, c.to)
					}
				}
			}
			id, err := intern(closure(tgt))
			if err != nil {
				return nil, err
			}
			calls = append(calls, cedge{r, id})
		}
		d.st[i].ranges = ranges
		d.st[i].calls = calls
	}
	return d, nil
}

func setKey(set []int32) string {
	if len(set) == 0 {
		return ""
	}
	return string(unsafe.Slice((*byte)(unsafe.Pointer(&set[0])), len(set)*4))
}

// trim drops the moves into states that cannot reach a final state.
// productive reports whether a called rule can match at all (nil: all can).
// A trimmed automaton never lets a matcher into a dead end, which is what
// makes every allowed token completable.
func (d *dfa) trim(productive func(rule int32) bool) {
	live := make([]bool, len(d.st))
	for changed := true; changed; {
		changed = false
		for i := range d.st {
			if live[i] {
				continue
			}
			st := &d.st[i]
			ok := st.final
			for _, r := range st.ranges {
				ok = ok || live[r.to]
			}
			for _, c := range st.calls {
				ok = ok || (live[c.to] && (productive == nil || productive(c.rule)))
			}
			if ok {
				live[i] = true
				changed = true
			}
		}
	}
	for i := range d.st {
		st := &d.st[i]
		st.ranges = slices.DeleteFunc(st.ranges, func(e bedge) bool { return !live[e.to] })
		st.calls = slices.DeleteFunc(st.calls, func(c cedge) bool {
			return !live[c.to] || (productive != nil && !productive(c.rule))
		})
	}
}

// empty reports whether the start state matches nothing.
func (d *dfa) empty() bool {
	s := d.st[0]
	return !s.final && len(s.ranges) == 0 && len(s.calls) == 0
}

// minimize merges equivalent states (Hopcroft's partition refinement,
// O(k n log n) for k symbols: byte classes plus called rules) and drops
// unreachable ones. Fewer states mean fewer token masks to compute.
func (d *dfa) minimize() *dfa {
	// Symbols: byte classes over the whole automaton, then one per rule
	// called anywhere.
	var pts []int
	var rules []int32
	for _, s := range d.st {
		for _, r := range s.ranges {
			pts = append(pts, int(r.lo), int(r.hi)+1)
		}
		for _, c := range s.calls {
			rules = append(rules, c.rule)
		}
	}
	pts = append(pts, 0, 256)
	slices.Sort(pts)
	pts = slices.Compact(pts)
	slices.Sort(rules)
	rules = slices.Compact(rules)
	nc := len(pts) - 1
	m := nc + len(rules)
	n := len(d.st) + 1 // the last state is a sink for missing moves
	sink := int32(n - 1)
	delta := make([]int32, n*m)
	for i := range delta {
		delta[i] = sink
	}
	for i := range d.st {
		s := &d.st[i]
		c := 0
		for _, r := range s.ranges {
			for c < nc && pts[c] < int(r.lo) {
				c++
			}
			for c < nc && pts[c] <= int(r.hi) {
				delta[i*m+c] = r.to
				c++
			}
		}
		for _, cl := range s.calls {
			j, _ := slices.BinarySearch(rules, cl.rule)
			delta[i*m+nc+j] = cl.to
		}
	}
	// Inverse moves in CSR form: pre[a] of state q are
	// preList[preOff[q*m+a]:preOff[q*m+a+1]].
	preOff := make([]int32, n*m+1)
	for p := 0; p < n; p++ {
		for a := 0; a < m; a++ {
			preOff[int(delta[p*m+a])*m+a+1]++
		}
	}
	for i := 1; i < len(preOff); i++ {
		preOff[i] += preOff[i-1]
	}
	preList := make([]int32, n*m)
	fill := slices.Clone(preOff[:n*m])
	for p := 0; p < n; p++ {
		for a := 0; a < m; a++ {
			k := int(delta[p*m+a])*m + a
			preList[fill[k]] = int32(p)
			fill[k]++
		}
	}
	// The partition: elems grouped by block, block b = elems[start[b]:end[b]].
	elems := make([]int32, 0, n)
	for i := 0; i < n-1; i++ {
		if d.st[i].final {
			elems = append(elems, int32(i))
		}
	}
	nf := len(elems)
	for i := 0; i < n; i++ {
		if i == n-1 || !d.st[i].final {
			elems = append(elems, int32(i))
		}
	}
	loc := make([]int32, n)
	for i, e := range elems {
		loc[e] = int32(i)
	}
	blockOf := make([]int32, n)
	var start, end []int32
	var inW []bool
	var work []int32
	newBlock := func(s, e int) {
		b := int32(len(start))
		start = append(start, int32(s))
		end = append(end, int32(e))
		inW = append(inW, false)
		for _, x := range elems[s:e] {
			blockOf[x] = b
		}
	}
	if nf > 0 {
		newBlock(0, nf)
	}
	newBlock(nf, n)
	for b := range start {
		work = append(work, int32(b))
		inW[b] = true
	}
	marked := make([]int32, 0, len(start)) // marked count per block
	var touched []int32
	var members []int32
	for len(work) > 0 {
		c := work[len(work)-1]
		work = work[:len(work)-1]
		inW[c] = false
		members = append(members[:0], elems[start[c]:end[c]]...)
		for a := 0; a < m; a++ {
			touched = touched[:0]
			for _, q := range members {
				k := int(q)*m + a
				for _, p := range preList[preOff[k]:preOff[k+1]] {
					b := blockOf[p]
					for int(b) >= len(marked) {
						marked = append(marked, 0)
					}
					// Move p to the marked front of its block.
					pos := start[b] + marked[b]
					if loc[p] < pos {
						continue // already marked
					}
					if marked[b] == 0 {
						touched = append(touched, b)
					}
					other := elems[pos]
					elems[pos], elems[loc[p]] = p, other
					loc[other], loc[p] = loc[p], pos
					marked[b]++
				}
			}
			for _, b := range touched {
				k := marked[b]
				marked[b] = 0
				if k == end[b]-start[b] {
					continue
				}
				// Split b: the marked front becomes a new block.
				s := start[b]
				start[b] = s + k
				nb := int32(len(start))
				newBlock(int(s), int(s+k))
				if inW[b] {
					work = append(work, nb)
					inW[nb] = true
				} else if k <= end[b]-start[b] {
					work = append(work, nb)
					inW[nb] = true
				} else {
					work = append(work, b)
					inW[b] = true
				}
			}
		}
	}
	// Renumber blocks breadth-first from the start, dropping the sink's
	// block and unreachable ones, so state 0 stays the start.
	sinkBlock := blockOf[sink]
	newID := make([]int32, len(start))
	for i := range newID {
		newID[i] = -1
	}
	var rep []int32
	newID[blockOf[0]] = 0
	rep = append(rep, elems[start[blockOf[0]]])
	out := &dfa{}
	for k := 0; k < len(rep); k++ {
		s := &d.st[rep[k]]
		ns := dstate{final: s.final}
		visit := func(t int32) int32 {
			b := blockOf[t]
			if b == sinkBlock {
				return -1
			}
			if newID[b] < 0 {
				newID[b] = int32(len(rep))
				rep = append(rep, elems[start[b]])
			}
			return newID[b]
		}
		for _, r := range s.ranges {
			to := visit(r.to)
			if to < 0 {
				continue
			}
			if l := len(ns.ranges); l > 0 && ns.ranges[l-1].to == to && int(ns.ranges[l-1].hi)+1 == int(r.lo) {
				ns.ranges[l-1].hi = r.hi
				continue
			}
			ns.ranges = append(ns.ranges, bedge{r.lo, r.hi, to})
		}
		for _, c := range s.calls {
			if to := visit(c.to); to >= 0 {
				ns.calls = append(ns.calls, cedge{c.rule, to})
			}
		}
		out.st = append(out.st, ns)
	}
	return out
}

// product builds the DFA of a∩b (and) or a∖b (!and) over call-free DFAs.
func product(a, b *dfa, and bool, bud *budget) (*dfa, error) {
	type pair struct{ x, y int32 } // y < 0: b is dead
	index := map[pair]int32{}
	var queue []pair
	out := &dfa{}
	intern := func(p pair) (int32, error) {
		if id, ok := index[p]; ok {
			return id, nil
		}
		if len(out.st) >= bud.lim.MaxStates {
			return 0, errorf(ErrLimit, "more than %d automaton states", bud.lim.MaxStates)
		}
		id := int32(len(out.st))
		index[p] = id
		queue = append(queue, p)
		fa := a.st[p.x].final
		fb := p.y >= 0 && b.st[p.y].final
		out.st = append(out.st, dstate{final: fa && (fb == and)})
		return id, nil
	}
	if _, err := intern(pair{0, 0}); err != nil {
		return nil, err
	}
	var pts []int
	for i := 0; i < len(queue); i++ {
		if err := bud.tick(); err != nil {
			return nil, err
		}
		p := queue[i]
		pts = pts[:0]
		for _, r := range a.st[p.x].ranges {
			pts = append(pts, int(r.lo), int(r.hi)+1)
		}
		if p.y >= 0 {
			for _, r := range b.st[p.y].ranges {
				pts = append(pts, int(r.lo), int(r.hi)+1)
			}
		}
		slices.Sort(pts)
		pts = slices.Compact(pts)
		var ranges []bedge
		for k := 0; k+1 < len(pts); k++ {
			c := byte(pts[k])
			tx := stepRanges(a.st[p.x].ranges, c)
			if tx < 0 {
				continue
			}
			ty := int32(-1)
			if p.y >= 0 {
				ty = stepRanges(b.st[p.y].ranges, c)
			}
			if and && ty < 0 {
				continue
			}
			id, err := intern(pair{tx, ty})
			if err != nil {
				return nil, err
			}
			ranges = append(ranges, bedge{c, byte(pts[k+1] - 1), id})
		}
		out.st[i].ranges = ranges
	}
	out.trim(nil)
	return out.minimize(), nil
}

func stepRanges(rs []bedge, c byte) int32 {
	for _, r := range rs {
		if r.lo <= c && c <= r.hi {
			return r.to
		}
	}
	return -1
}
