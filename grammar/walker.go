package grammar

// A walker runs the grammar's pushdown automaton over bytes, keeping the
// configuration after every byte as a level so that a trie walk can step
// back to any prefix. A configuration is a set of stacks; stacks are
// persistent linked lists of nodes in one arena (a node is a state and its
// caller's return frame), so a byte step shares every frame below the top.

type node struct{ gid, parent int32 }

// Stack bottoms. Popping the root's frame completes the grammar; while a
// state's context-free token mask is computed the state sits on bottomCtx,
// and popping it means the rest of the token depends on the callers.
const (
	bottomRoot int32 = -1
	bottomCtx  int32 = -2
)

type level struct {
	tops  int32 // this level's stack tops are tops[tops:next level's tops]
	nodes int32 // nodes made from this level on start here
	alive bool  // some stack consumed this level's byte
	end   bool  // some stack popped bottomRoot: the grammar may be complete
	ctx   bool  // some stack popped bottomCtx: the rest needs the callers
	cum   bool  // ctx at this level or an earlier one
}

type walker struct {
	g     *Grammar
	nodes []node
	tops  []int32 // stack tops (node ids) of all levels; each top has byte moves
	lv    []level

	// Per-level scratch: nodes already expanded, and hash-consing of the
	// nodes made, so equal stacks share ids and closures terminate.
	vis     []int32
	visMap  map[int32]struct{}
	consMap map[node]int32
}

func newWalker(g *Grammar) *walker {
	return &walker{g: g, visMap: map[int32]struct{}{}, consMap: map[node]int32{}}
}

// start makes level 0 from the given tops (nodes already in the arena).
func (w *walker) start(tops []int32) {
	w.tops = append(w.tops[:0], tops...)
	w.lv = append(w.lv[:0], level{tops: 0, nodes: int32(len(w.nodes)), alive: true})
}

// truncate keeps levels 0..d, dropping what later levels made.
func (w *walker) truncate(d int) {
	if len(w.lv) > d+1 {
		next := w.lv[d+1]
		w.tops = w.tops[:next.tops]
		w.nodes = w.nodes[:next.nodes]
		w.lv = w.lv[:d+1]
	}
}

// depth is the index of the last level.
func (w *walker) depth() int { return len(w.lv) - 1 }

// lastTops are the stack tops of the last level.
func (w *walker) lastTops() []int32 { return w.tops[w.lv[len(w.lv)-1].tops:] }

// push steps every top of the last level by byte b into a new level and
// reports whether any stack could.
func (w *walker) push(b byte) bool {
	d := len(w.lv) - 1
	from, to := w.lv[d].tops, int32(len(w.tops))
	w.lv = append(w.lv, level{tops: to, nodes: int32(len(w.nodes)), cum: w.lv[d].cum})
	w.vis = w.vis[:0]
	if len(w.visMap) > 0 {
		clear(w.visMap)
	}
	if len(w.consMap) > 0 {
		clear(w.consMap)
	}
	g := w.g
	alive := false
	for i := from; i < to; i++ {
		n := w.nodes[w.tops[i]]
		s := g.step(n.gid, b)
		if s < 0 {
			continue
		}
		alive = true
		if g.flags[s] == fBytes && to-from == 1 {
			// Fast path: a single stack moving inside a rule.
			w.nodes = append(w.nodes, node{s, n.parent})
			w.tops = append(w.tops, int32(len(w.nodes)-1))
			continue
		}
		w.visit(w.cons(s, n.parent))
	}
	L := &w.lv[d+1]
	L.alive = alive
	L.cum = L.cum || L.ctx
	return alive
}

// cons returns the node (gid, parent) made at this level, or a new one.
func (w *walker) cons(gid, parent int32) int32 {
	k := node{gid, parent}
	start := w.lv[len(w.lv)-1].nodes
	if n := int32(len(w.nodes)) - start; n <= 16 {
		for i := start; i < int32(len(w.nodes)); i++ {
			if w.nodes[i] == k {
				return i
			}
		}
		if n == 16 {
			for i := start; i < int32(len(w.nodes)); i++ {
				w.consMap[w.nodes[i]] = i
			}
		}
	} else if id, ok := w.consMap[k]; ok {
		return id
	}
	w.nodes = append(w.nodes, k)
	id := int32(len(w.nodes) - 1)
	if len(w.consMap) > 0 {
		w.consMap[k] = id
	}
	return id
}

func (w *walker) visited(id int32) bool {
	if len(w.vis) < 16 {
		for _, v := range w.vis {
			if v == id {
				return true
			}
		}
		w.vis = append(w.vis, id)
		if len(w.vis) == 16 {
			for _, v := range w.vis {
				w.visMap[v] = struct{}{}
			}
		}
		return false
	}
	if _, ok := w.visMap[id]; ok {
		return true
	}
	w.visMap[id] = struct{}{}
	return false
}

// visit expands node id: a top if it has byte moves, a pop if its rule may
// end, a push for every call.
func (w *walker) visit(id int32) {
	if w.visited(id) {
		return
	}
	g := w.g
	n := w.nodes[id]
	f := g.flags[n.gid]
	if f&fBytes != 0 {
		w.tops = append(w.tops, id)
	}
	if f&fFinal != 0 {
		if n.parent == bottomRoot {
			w.lv[len(w.lv)-1].end = true
		} else if n.parent == bottomCtx {
			w.lv[len(w.lv)-1].ctx = true
		} else {
			w.visit(n.parent)
		}
	}
	if f&fCalls != 0 {
		for _, c := range g.calls[g.callOff[n.gid]:g.callOff[n.gid+1]] {
			par := n.parent
			if !c.tail {
				par = w.cons(c.ret, n.parent)
			}
			w.visit(w.cons(c.start, par))
		}
	}
}

// closeStart makes level 0 the closure of the root's start state.
func (w *walker) closeStart() {
	w.nodes = w.nodes[:0]
	w.tops = w.tops[:0]
	w.lv = append(w.lv[:0], level{alive: true})
	w.vis = w.vis[:0]
	clear(w.visMap)
	clear(w.consMap)
	w.visit(w.cons(w.g.root, bottomRoot))
}
