package grammar

import (
	"errors"
	"sync"
	"testing"
)

func TestCache(t *testing.T) {
	c := NewCache(nil, Limits{}, 2)
	a := Spec{Regex: "a+"}
	var wg sync.WaitGroup
	gs := make([]*Grammar, 8)
	for i := range gs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, err := c.Get(a)
			if err != nil {
				t.Error(err)
			}
			gs[i] = g
		}()
	}
	wg.Wait()
	for _, g := range gs {
		if g != gs[0] {
			t.Fatal("same spec compiled twice")
		}
	}
	if _, err := c.Get(Spec{Regex: "("}); !errors.Is(err, ErrSyntax) {
		t.Fatalf("bad spec: %v", err)
	}
	if c.Len() != 1 {
		t.Fatalf("failure cached: %d entries", c.Len())
	}
	c.Get(Spec{Regex: "b"})
	c.Get(Spec{Regex: "c"})
	if c.Len() != 2 {
		t.Fatalf("%d entries, max 2", c.Len())
	}
	if g, _ := c.Get(a); g == gs[0] {
		t.Fatal("least recently used entry not evicted")
	}
}
