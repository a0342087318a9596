package grammar

import (
	"container/list"
	"sync"
)

// Cache holds compiled grammars for one vocabulary, keyed by Spec.Key,
// least recently used first out. Concurrent requests for the same spec
// compile it once; failures are not cached. Compiled grammars keep their
// token-mask caches, so a schema reused across requests pays for its
// masks once.
type Cache struct {
	vocab *Vocab
	lim   Limits
	max   int

	mu      sync.Mutex
	entries map[string]*list.Element
	order   *list.List // front: most recent
}

type cacheEntry struct {
	key  string
	done chan struct{} // closed when g/err are set
	g    *Grammar
	err  error
}

// NewCache returns a cache of at most size grammars (at least 1).
func NewCache(vocab *Vocab, lim Limits, size int) *Cache {
	return &Cache{vocab: vocab, lim: lim, max: max(size, 1), entries: map[string]*list.Element{}, order: list.New()}
}

// Get returns the compiled grammar of spec, compiling it if needed.
func (c *Cache) Get(spec Spec) (*Grammar, error) {
	key := spec.Key()
	c.mu.Lock()
	if el, ok := c.entries[key]; ok {
		c.order.MoveToFront(el)
		e := el.Value.(*cacheEntry)
		c.mu.Unlock()
		<-e.done
		return e.g, e.err
	}
	e := &cacheEntry{key: key, done: make(chan struct{})}
	c.entries[key] = c.order.PushFront(e)
	for c.order.Len() > c.max {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.entries, old.Value.(*cacheEntry).key)
	}
	c.mu.Unlock()

	e.g, e.err = Compile(spec, c.vocab, c.lim)
	close(e.done)
	if e.err != nil {
		c.mu.Lock()
		if el, ok := c.entries[key]; ok && el.Value.(*cacheEntry) == e {
			c.order.Remove(el)
			delete(c.entries, key)
		}
		c.mu.Unlock()
	}
	return e.g, e.err
}

// Len is the number of grammars held.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
