package grammar

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
)

// Rolling back k tokens restores exactly the masks seen k steps earlier.
func TestRollback(t *testing.T) {
	v, _ := testVocab(t, "qwen3")
	g, err := Compile(Spec{JSONSchema: treeSchema}, v, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	m := g.NewMatcher()
	m.SetMaxRollback(8)
	mask := make([]uint64, v.MaskWords())
	var masks [][]uint64
	for step := 0; step < 40; step++ {
		m.FillMask(mask)
		masks = append(masks, slices.Clone(mask))
		tok := sampleMask(mask, rng)
		if v.isEOS[tok] {
			break
		}
		if err := m.Accept(tok); err != nil {
			t.Fatal(err)
		}
		if step%5 == 4 {
			k := 1 + rng.IntN(4)
			if err := m.Rollback(k); err != nil {
				t.Fatal(err)
			}
			masks = masks[:len(masks)-k+1]
			m.FillMask(mask)
			if !slices.Equal(mask, masks[len(masks)-1]) {
				t.Fatalf("step %d: mask after Rollback(%d) differs", step, k)
			}
			masks = masks[:len(masks)-1]
		}
	}
	if err := m.Rollback(9); !errors.Is(err, ErrRollback) {
		t.Fatalf("Rollback past the history: %v", err)
	}
	m.Reset()
	m.FillMask(mask)
	if !slices.Equal(mask, masks[0]) {
		t.Fatal("mask after Reset differs from the first")
	}
}

// Long outputs: the node arena is compacted and matching still works.
func TestLongOutputCompaction(t *testing.T) {
	g, err := Compile(Spec{JSONObject: true}, nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	m := g.NewMatcher()
	if err := m.AcceptString(`{"a": [`); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20000; i++ {
		s := `{"k": [1, "x"]}, `
		if err := m.AcceptString(s); err != nil {
			t.Fatalf("item %d: %v", i, err)
		}
	}
	if err := m.AcceptString(`null]}`); err != nil {
		t.Fatal(err)
	}
	if !m.CanEnd() || !m.MustEnd() {
		t.Fatal("complete object not accepted")
	}
	if n := len(m.w.nodes); n > 20000 {
		t.Fatalf("arena holds %d nodes", n)
	}
	if err := m.Rollback(3); err != nil {
		t.Fatal(err)
	}
	if err := m.AcceptString(strings.Repeat(" ", 3) + `{}]}`); err != nil {
		t.Fatalf("after rollback: %v", err)
	}
}

// One Grammar shared by concurrent matchers (run with -race).
func TestConcurrentMatchers(t *testing.T) {
	v, _ := testVocab(t, "qwen3")
	g, err := Compile(Spec{JSONSchema: toolSchema}, v, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, seed))
			mask := make([]uint64, v.MaskWords())
			m := g.NewMatcher()
			for step := 0; step < 60; step++ {
				m.FillMask(mask)
				tok := sampleMask(mask, rng)
				if tok < 0 || m.Accept(tok) != nil {
					t.Errorf("step %d: bad mask", step)
					return
				}
				if m.IsTerminated() {
					m.Reset()
				}
			}
		}(uint64(w))
	}
	wg.Wait()
}

// Past MaxMaskCacheBytes masks are still right, only not kept.
func TestMaskCacheBudget(t *testing.T) {
	v, _ := testVocab(t, "qwen3")
	g, err := Compile(Spec{JSONSchema: toolSchema}, v, Limits{MaxMaskCacheBytes: 2000})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := Compile(Spec{JSONSchema: toolSchema}, v, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	m, mr := g.NewMatcher(), ref.NewMatcher()
	mask, want := make([]uint64, v.MaskWords()), make([]uint64, v.MaskWords())
	rng := rand.New(rand.NewPCG(2, 2))
	for step := 0; step < 30 && !m.IsTerminated(); step++ {
		m.FillMask(mask)
		mr.FillMask(want)
		if !slices.Equal(mask, want) {
			t.Fatalf("step %d: masks differ", step)
		}
		tok := sampleMask(mask, rng)
		if m.Accept(tok) != nil || mr.Accept(tok) != nil {
			t.Fatal("rejected")
		}
	}
	if n := g.MaskCacheBytes(); n > 2000 {
		t.Fatalf("%d bytes kept", n)
	}
	if ref.MaskCacheBytes() <= 2000 {
		t.Fatalf("reference kept only %d bytes", ref.MaskCacheBytes())
	}
}
