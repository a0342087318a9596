package engine

import (
	"sort"
	"unsafe"
)

// stopMatcher finds a request's stop strings in its sequences' text: an
// Aho-Corasick automaton built once per request (in Submit) and shared,
// read-only, by the request's sequences, each of which keeps only its state
// (a node). Feeding it a byte costs amortized O(1) and the hold-back query
// at most the longest stop string's length, whatever the number of stop
// strings, so one request's long stop list cannot slow down the step loop.
//
// It answers the two questions of emit:
//   - scan: the earliest-starting stop string that ends in the new text
//     (ties: the first in the request's list), as a naive search of every
//     stop string would find it;
//   - holdBack: how many trailing bytes could still be the start of a stop
//     string and must not be sent yet.
type stopMatcher struct {
	stops []string
	nodes []stopNode // the trie; node 0 is the root
	edges []stopEdge // node i's children are edges[nodes[i].lo:nodes[i].hi], sorted by byte
	root  [256]int32 // the root's goto on every byte (0 where it has no child)
	// delta, when the automaton is small enough (denseBudget), is its
	// complete transition table: state*nclass + class[c] -> next state, so
	// a byte costs one load. Bytes in no stop string share class 0.
	delta  []int32
	class  [256]uint16
	nclass int32
}

// denseBudget bounds the complete transition table, in entries of 4 bytes
// (256 KiB): typical stop lists need a few thousand entries, the API's
// limit of 64 stop strings of up to 16 bytes some 30,000. Past it (long
// stop strings over many distinct bytes) the automaton follows failure
// links instead, still O(1) amortized per byte, so that a request's
// automaton never costs more memory than its stop strings justify.
const denseBudget = 1 << 16

// stopNode is one trie node; its fields sit together so that a step of the
// automaton touches one cache line of it however large the trie is.
type stopNode struct {
	lo, hi int32 // its children in edges
	depth  int32 // length of its string
	fail   int32 // the longest proper suffix of its string that is a node
	// out is the index in stops of the longest stop string that is a
	// suffix of its string (so the earliest start among the matches ending
	// here; the lowest index among equal strings), -1 if none.
	out int32
	// hold is the depth of the deepest node on its failure chain (itself
	// included) that has children: the longest suffix of its string that
	// is a proper prefix of a stop string.
	hold int32
}

type stopEdge struct {
	c  byte
	to int32
}

// newStopMatcher builds the automaton of stops (none may be empty).
func newStopMatcher(stops []string) *stopMatcher { return buildStopMatcher(stops, denseBudget) }

// buildStopMatcher builds it with a complete transition table of at most
// budget entries.
func buildStopMatcher(stops []string, budget int) *stopMatcher {
	// Build the trie with per-node child lists, then flatten them.
	type node struct {
		kids  []stopEdge
		depth int32
		term  int32 // index in stops of the string ending here, -1 if none
	}
	nodes := []node{{term: -1}}
	for si, s := range stops {
		cur := int32(0)
		for i := 0; i < len(s); i++ {
			c := s[i]
			kids := nodes[cur].kids
			k := sort.Search(len(kids), func(j int) bool { return kids[j].c >= c })
			if k < len(kids) && kids[k].c == c {
				cur = kids[k].to
				continue
			}
			next := int32(len(nodes))
			nodes = append(nodes, node{depth: nodes[cur].depth + 1, term: -1})
			kids = append(kids, stopEdge{})
			copy(kids[k+1:], kids[k:])
			kids[k] = stopEdge{c, next}
			nodes[cur].kids = kids
			cur = next
		}
		if nodes[cur].term < 0 {
			nodes[cur].term = int32(si)
		}
	}
	m := &stopMatcher{stops: stops, nodes: make([]stopNode, len(nodes))}
	for i, nd := range nodes {
		lo := int32(len(m.edges))
		m.edges = append(m.edges, nd.kids...)
		m.nodes[i] = stopNode{lo: lo, hi: int32(len(m.edges)), depth: nd.depth}
	}
	for _, e := range nodes[0].kids {
		m.root[e.c] = e.to
	}
	// Breadth-first: a node's failure target is shallower, so it is done
	// before the node; so is every node step follows from it.
	m.nodes[0].out = -1
	queue := make([]int32, 1, len(nodes))
	for qi := 0; qi < len(queue); qi++ {
		v := queue[qi]
		nv := &m.nodes[v]
		if v != 0 {
			f := &m.nodes[nv.fail]
			nv.out, nv.hold = f.out, f.hold
			if t := nodes[v].term; t >= 0 {
				nv.out = t // longer than any stop string ending at fail
			}
			if nv.hi > nv.lo {
				nv.hold = nv.depth
			}
		}
		for _, e := range nodes[v].kids {
			if v != 0 {
				m.nodes[e.to].fail = m.step(nv.fail, e.c)
			}
			queue = append(queue, e.to)
		}
	}
	m.buildDelta(queue, budget)
	return m
}

// buildDelta fills the complete transition table when it fits budget;
// order is the nodes in breadth-first order.
func (m *stopMatcher) buildDelta(order []int32, budget int) {
	var used [256]bool
	for _, e := range m.edges {
		used[e.c] = true
	}
	nc := int32(1)
	for c := range 256 {
		if used[c] {
			m.class[c] = uint16(nc)
			nc++
		}
	}
	if len(m.nodes)*int(nc) > budget {
		return
	}
	m.nclass = nc
	m.delta = make([]int32, len(m.nodes)*int(nc))
	for _, v := range order {
		row := m.delta[int(v)*int(nc) : int(v+1)*int(nc)]
		if v != 0 {
			// A missing child goes where the failure node goes; it is
			// shallower, so its row is complete.
			f := m.nodes[v].fail
			copy(row, m.delta[int(f)*int(nc):int(f+1)*int(nc)])
		}
		n := m.nodes[v]
		for _, e := range m.edges[n.lo:n.hi] {
			row[m.class[e.c]] = e.to
		}
	}
}

// step is the automaton's transition: the node of the longest suffix of
// (state's string + c) that is a prefix of a stop string.
func (m *stopMatcher) step(state int32, c byte) int32 {
	if m.delta != nil {
		return m.delta[state*m.nclass+int32(m.class[c])]
	}
	for state != 0 {
		n := &m.nodes[state]
		lo, hi := n.lo, n.hi
		for lo < hi {
			mid := int32(uint32(lo+hi) >> 1)
			if m.edges[mid].c < c {
				lo = mid + 1
			} else {
				hi = mid
			}
		}
		if lo < n.hi && m.edges[lo].c == c {
			return m.edges[lo].to
		}
		state = n.fail
	}
	return m.root[c]
}

// scan feeds text[from:] to the automaton from state (which must be the
// state after text[:from]) and returns the new state and the earliest start
// in text of a stop string ending after from, with its index in the stop
// list (ties by list order), or pos -1.
func (m *stopMatcher) scan(state int32, text string, from int) (next int32, pos, which int) {
	pos, which = -1, -1
	for i := from; i < len(text); i++ {
		state = m.step(state, text[i])
		o := m.nodes[state].out
		if o < 0 {
			continue
		}
		start := i + 1 - len(m.stops[o])
		if pos < 0 || start < pos || start == pos && int(o) < which {
			pos, which = start, int(o)
		}
	}
	return state, pos, which
}

// size is the automaton's memory in bytes.
func (m *stopMatcher) size() int {
	return len(m.nodes)*int(unsafe.Sizeof(stopNode{})) + len(m.edges)*int(unsafe.Sizeof(stopEdge{})) +
		len(m.delta)*4 + int(unsafe.Sizeof(*m))
}

// holdBack is how many trailing bytes of the scanned text, at most limit,
// could be the start of a stop string (a proper prefix of one).
func (m *stopMatcher) holdBack(state int32, limit int) int {
	for int(m.nodes[state].depth) > limit {
		state = m.nodes[state].fail
	}
	return int(m.nodes[state].hold)
}
