package kvcache

import (
	"math/rand/v2"
	"testing"
)

func newManager(t *testing.T, blocks, bs int, caching bool) *Manager {
	t.Helper()
	m, err := New(Options{NumBlocks: blocks, BlockSize: bs, EnablePrefixCaching: caching})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func check(t *testing.T, m *Manager) {
	t.Helper()
	if err := m.Check(); err != nil {
		t.Fatal(err)
	}
}

func seqTokens(n, salt int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = (i*7 + salt) % 100
	}
	return s
}

func TestNewRejectsBadOptions(t *testing.T) {
	for _, o := range []Options{{}, {NumBlocks: 1}, {BlockSize: 16}, {NumBlocks: -1, BlockSize: 16}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) = nil error", o)
		}
	}
}

func TestAllocateAndFree(t *testing.T) {
	m := newManager(t, 8, 4, false)
	var a, b Table
	if !m.Allocate(&a, nil, 9) { // 3 blocks
		t.Fatal("allocate a")
	}
	if len(a.Blocks) != 3 || m.NumFree() != 5 {
		t.Fatalf("blocks %v free %d", a.Blocks, m.NumFree())
	}
	if !m.Allocate(&a, nil, 12) || len(a.Blocks) != 3 { // still 3
		t.Fatalf("grow within block: %v", a.Blocks)
	}
	if !m.Allocate(&b, nil, 20) { // 5 blocks
		t.Fatal("allocate b")
	}
	if m.NumFree() != 0 || m.Usage() != 1 {
		t.Fatalf("free %d usage %v", m.NumFree(), m.Usage())
	}
	if m.Allocate(&a, nil, 13) {
		t.Fatal("allocated past capacity")
	}
	if len(a.Blocks) != 3 {
		t.Fatal("failed allocation changed the table")
	}
	seen := map[int32]bool{}
	for _, x := range append(append([]int32{}, a.Blocks...), b.Blocks...) {
		if seen[x] {
			t.Fatalf("block %d handed out twice", x)
		}
		seen[x] = true
	}
	check(t, m)
	m.Free(&a)
	m.Free(&b)
	if m.NumFree() != 8 || len(a.Blocks) != 0 {
		t.Fatalf("free %d after freeing all", m.NumFree())
	}
	check(t, m)
}

func TestPrefixHitAndCounters(t *testing.T) {
	m := newManager(t, 16, 4, true)
	prompt := seqTokens(10, 1) // 2 full blocks + 2
	var a Table
	if hits := m.Match(&a, prompt); len(hits) != 0 {
		t.Fatalf("hits on empty cache: %v", hits)
	}
	if !m.Allocate(&a, nil, len(prompt)) {
		t.Fatal("allocate")
	}
	m.Commit(&a, prompt, len(prompt))
	if m.NumCachedBlocks() != 2 {
		t.Fatalf("cached blocks %d, want 2", m.NumCachedBlocks())
	}

	// Same prefix, different tail: both full blocks hit, while a is alive.
	other := append(append([]int{}, prompt[:8]...), 55, 56, 57)
	var b Table
	hits := m.Match(&b, other)
	if len(hits) != 2 || hits[0] != a.Blocks[0] || hits[1] != a.Blocks[1] {
		t.Fatalf("hits %v, a %v", hits, a.Blocks)
	}
	if !m.Allocate(&b, hits, len(other)) {
		t.Fatal("allocate b")
	}
	m.RecordLookup(len(other), 8)
	if q, h, _ := m.PrefixStats(); q != 11 || h != 8 {
		t.Fatalf("stats %d/%d", q, h)
	}
	if b.Blocks[0] != a.Blocks[0] || b.Blocks[2] == a.Blocks[2] {
		t.Fatalf("b %v a %v", b.Blocks, a.Blocks)
	}
	if m.NumFree() != 16-3-1 {
		t.Fatalf("free %d", m.NumFree())
	}
	check(t, m)

	// After both are freed the blocks stay cached and hit again.
	m.Free(&a)
	m.Free(&b)
	if m.NumFree() != 16 {
		t.Fatalf("free %d", m.NumFree())
	}
	var c Table
	if hits := m.Match(&c, prompt); len(hits) != 2 {
		t.Fatalf("hits after free: %v", hits)
	}
	// A differing first block misses entirely (hash chain).
	diff := append([]int{99}, prompt[1:]...)
	if hits := m.Match(&c, diff); len(hits) != 0 {
		t.Fatalf("hits for changed first token: %v", hits)
	}
	// Second block alone (shifted) must not hit.
	if hits := m.Match(&c, prompt[4:]); len(hits) != 0 {
		t.Fatalf("hits for shifted prefix: %v", hits)
	}
	check(t, m)
}

func TestMatchLeavesLastToken(t *testing.T) {
	m := newManager(t, 8, 4, true)
	prompt := seqTokens(8, 3) // exactly 2 blocks
	var a Table
	m.Allocate(&a, nil, 8)
	m.Commit(&a, prompt, 8)
	m.Free(&a)
	var b Table
	if hits := m.Match(&b, prompt); len(hits) != 1 {
		t.Fatalf("hits %d, want 1 (the last token must be recomputed)", len(hits))
	}
}

func TestLRUEviction(t *testing.T) {
	m := newManager(t, 4, 2, true)
	p1, p2 := seqTokens(4, 1), seqTokens(4, 2) // 2 blocks each
	var a, b Table
	m.Allocate(&a, nil, 4)
	m.Commit(&a, p1, 4)
	m.Free(&a)
	m.Allocate(&b, nil, 4)
	m.Commit(&b, p2, 4)
	m.Free(&b)
	if m.NumCachedBlocks() != 4 || m.NumFree() != 4 {
		t.Fatalf("cached %d free %d", m.NumCachedBlocks(), m.NumFree())
	}
	// Touch p1 again so p2 becomes least recently used.
	var c Table
	hits := m.Match(&c, append(append([]int{}, p1...), 1))
	if len(hits) != 2 {
		t.Fatalf("p1 hits %d", len(hits))
	}
	m.Allocate(&c, hits, 5)
	m.Free(&c)
	// c's fresh block evicted p2's tail (least recently used, tail first);
	// d gets that block back, now uncached, so nothing more is evicted.
	var d Table
	m.Allocate(&d, nil, 2)
	if _, _, ev := m.PrefixStats(); ev != 1 {
		t.Fatalf("evictions %d", ev)
	}
	var e, f Table
	if hits := m.Match(&e, append(append([]int{}, p2...), 0)); len(hits) != 1 {
		t.Fatalf("p2 should keep its head block, hits %d", len(hits))
	}
	if hits := m.Match(&f, append(append([]int{}, p1...), 0)); len(hits) != 2 {
		t.Fatalf("p1 should be intact, hits %d", len(hits))
	}
	check(t, m)
}

func TestUncachedBlocksReusedFirst(t *testing.T) {
	m := newManager(t, 4, 2, true)
	p := seqTokens(4, 1)
	var a, b Table
	m.Allocate(&a, nil, 4)
	m.Commit(&a, p, 4)
	m.Allocate(&b, nil, 3) // 2 blocks, 1 full but never committed
	m.Free(&a)
	m.Free(&b)
	var c Table
	m.Allocate(&c, nil, 4)
	if _, _, ev := m.PrefixStats(); ev != 0 {
		t.Fatalf("evicted %d cached blocks while uncached ones were free", ev)
	}
}

func TestForkSharesFullBlocks(t *testing.T) {
	m := newManager(t, 8, 4, false)
	prompt := seqTokens(10, 5)
	var p, c Table
	m.Allocate(&p, nil, 10)
	if n := m.Fork(&c, &p, 10); n != 8 {
		t.Fatalf("fork kept %d tokens, want 8", n)
	}
	if len(c.Blocks) != 2 || c.Blocks[1] != p.Blocks[1] {
		t.Fatalf("child %v parent %v", c.Blocks, p.Blocks)
	}
	if !m.Allocate(&c, nil, 11) || c.Blocks[2] == p.Blocks[2] {
		t.Fatalf("child tail %v", c.Blocks)
	}
	_ = prompt
	m.Free(&p)
	if m.NumFree() != 8-3 {
		t.Fatalf("free %d: shared blocks freed while the child holds them", m.NumFree())
	}
	m.Free(&c)
	if m.NumFree() != 8 {
		t.Fatalf("free %d", m.NumFree())
	}
	check(t, m)
}

// TestRandomOps hammers the allocator with random sequences and checks the
// invariants and that no block is ever shared unless by a cache hit.
func TestRandomOps(t *testing.T) {
	for _, caching := range []bool{false, true} {
		m := newManager(t, 32, 4, caching)
		rng := rand.New(rand.NewPCG(1, 2))
		type seq struct {
			t      Table
			tokens []int
			done   int
		}
		var live []*seq
		for range 5000 {
			switch op := rng.IntN(4); {
			case op == 0 || len(live) == 0:
				s := &seq{tokens: seqTokens(1+rng.IntN(30), rng.IntN(3))}
				hits := m.Match(&s.t, s.tokens)
				if m.Allocate(&s.t, hits, len(hits)*4+1) {
					s.done = len(hits)*4 + 1
					m.Commit(&s.t, s.tokens, s.done)
					live = append(live, s)
				}
			case op == 1:
				i := rng.IntN(len(live))
				m.Free(&live[i].t)
				live = append(live[:i], live[i+1:]...)
			default:
				s := live[rng.IntN(len(live))]
				if s.done < len(s.tokens) {
					n := min(len(s.tokens), s.done+rng.IntN(8)+1)
					if m.Allocate(&s.t, nil, n) {
						s.done = n
						m.Commit(&s.t, s.tokens, n)
					}
				}
			}
			if err := m.Check(); err != nil {
				t.Fatal(err)
			}
		}
		for _, s := range live {
			m.Free(&s.t)
		}
		if m.NumFree() != 32 {
			t.Fatalf("caching=%v: free %d after freeing all", caching, m.NumFree())
		}
		check(t, m)
	}
}
