// Package kvcache decides which KV-cache block belongs to whom: a block
// allocator with reference counts, per-sequence block tables, and automatic
// prefix caching (full blocks identified by a hash chain of their tokens,
// kept after their last user is gone and evicted LRU when blocks run out).
//
// The KV memory itself belongs to the model backend; this package only hands
// out block ids. A Manager is not safe for concurrent use: the engine's step
// loop owns it.
package kvcache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
)

// ErrBadOptions is returned by New for unusable options.
var ErrBadOptions = errors.New("kvcache: bad options")

// Options configure a Manager.
type Options struct {
	NumBlocks           int
	BlockSize           int
	EnablePrefixCaching bool
}

// Table is one sequence's block table and the hash chain of its full blocks.
// The zero value is an empty table.
type Table struct {
	// Blocks are the sequence's KV block ids by logical block index.
	Blocks []int32
	// hashes[i] is the chain hash of tokens[:(i+1)*blockSize]; it depends
	// only on the tokens, so it survives Free (a preempted sequence resumes
	// with the same tokens).
	hashes []uint64
	// numCached leading blocks are registered in (or were taken from) the
	// prefix cache; Commit registers the rest as they fill.
	numCached int
}

// NumTokens is how many token slots the table covers.
func (t *Table) NumTokens(blockSize int) int { return len(t.Blocks) * blockSize }

const none = -1

// Manager allocates blocks and keeps the prefix cache.
type Manager struct {
	numBlocks, blockSize int
	caching              bool

	ref []int32
	// Free blocks form one doubly linked list in eviction order: blocks
	// with no cached content at the front, cached ones behind them from
	// least to most recently freed.
	prev, next []int32
	head, tail int32
	numFree    int

	// Prefix cache: chain hash -> block, and for each block its hash
	// (valid when hashed[b]), parent hash and tokens, verified on a hit so
	// a hash collision can't serve wrong KV.
	seed     maphash.Seed
	cached   map[uint64]int32
	hashed   []bool
	hash     []uint64
	parent   []uint64
	tokens   []int32 // numBlocks*blockSize
	scratch  []byte
	hitsBuf  []int32
	queries  uint64
	hits     uint64
	evicted  uint64
	freedRef int // sanity: blocks freed with positive refcount (never)
}

// New creates a Manager with all blocks free.
func New(opts Options) (*Manager, error) {
	if opts.NumBlocks <= 0 || opts.BlockSize <= 0 {
		return nil, fmt.Errorf("%w: %d blocks of %d tokens", ErrBadOptions, opts.NumBlocks, opts.BlockSize)
	}
	if opts.NumBlocks >= 1<<31-1 {
		return nil, fmt.Errorf("%w: %d blocks", ErrBadOptions, opts.NumBlocks)
	}
	n := opts.NumBlocks
	m := &Manager{
		numBlocks: n,
		blockSize: opts.BlockSize,
		caching:   opts.EnablePrefixCaching,
		ref:       make([]int32, n),
		prev:      make([]int32, n),
		next:      make([]int32, n),
		head:      none,
		tail:      none,
	}
	for b := range n {
		m.pushBack(int32(b))
	}
	if m.caching {
		m.seed = maphash.MakeSeed()
		m.cached = make(map[uint64]int32)
		m.hashed = make([]bool, n)
		m.hash = make([]uint64, n)
		m.parent = make([]uint64, n)
		m.tokens = make([]int32, n*opts.BlockSize)
		m.scratch = make([]byte, 0, 8+4*opts.BlockSize)
	}
	return m, nil
}

// NumBlocks is the total number of blocks.
func (m *Manager) NumBlocks() int { return m.numBlocks }

// BlockSize is the number of token slots per block.
func (m *Manager) BlockSize() int { return m.blockSize }

// PrefixCaching reports whether prefix caching is on.
func (m *Manager) PrefixCaching() bool { return m.caching }

// NumFree is the number of blocks not used by any sequence (including cached
// blocks that can be evicted).
func (m *Manager) NumFree() int { return m.numFree }

// Usage is the fraction of blocks used by sequences, 0..1.
func (m *Manager) Usage() float64 { return 1 - float64(m.numFree)/float64(m.numBlocks) }

// NumCachedBlocks is the number of blocks holding prefix-cache entries.
func (m *Manager) NumCachedBlocks() int { return len(m.cached) }

// PrefixStats returns the prefix-cache counters: tokens looked up, tokens
// found, and blocks evicted from the cache.
func (m *Manager) PrefixStats() (queries, hits, evictions uint64) {
	return m.queries, m.hits, m.evicted
}

// RecordLookup adds one lookup's counts (call once a sequence that was
// matched against the cache got its blocks).
func (m *Manager) RecordLookup(queried, hit int) {
	m.queries += uint64(queried)
	m.hits += uint64(hit)
}

// blocksFor is the number of blocks that cover n tokens.
func (m *Manager) blocksFor(n int) int { return (n + m.blockSize - 1) / m.blockSize }

// ensureHashes extends t's hash chain over every full block of tokens.
func (m *Manager) ensureHashes(t *Table, tokens []int) {
	full := len(tokens) / m.blockSize
	for i := len(t.hashes); i < full; i++ {
		var parent uint64
		if i > 0 {
			parent = t.hashes[i-1]
		}
		t.hashes = append(t.hashes, m.blockHash(parent, tokens[i*m.blockSize:(i+1)*m.blockSize]))
	}
}

func (m *Manager) blockHash(parent uint64, toks []int) uint64 {
	b := binary.LittleEndian.AppendUint64(m.scratch[:0], parent)
	for _, t := range toks {
		b = binary.LittleEndian.AppendUint32(b, uint32(t))
	}
	m.scratch = b
	return maphash.Bytes(m.seed, b)
}

// Match returns the blocks of the longest cached prefix of tokens for an
// empty table t, leaving at least the last token to compute (its logits are
// needed). The slice is valid until the next Match; nothing is taken yet:
// pass it to Allocate.
func (m *Manager) Match(t *Table, tokens []int) []int32 {
	if !m.caching || len(t.Blocks) != 0 {
		return nil
	}
	m.ensureHashes(t, tokens)
	hits := m.hitsBuf[:0]
	maxBlocks := (len(tokens) - 1) / m.blockSize
	var parent uint64
	for i := 0; i < maxBlocks && i < len(t.hashes); i++ {
		h := t.hashes[i]
		b, ok := m.cached[h]
		if !ok || m.parent[b] != parent || !m.sameTokens(b, tokens[i*m.blockSize:(i+1)*m.blockSize]) {
			break
		}
		hits = append(hits, b)
		parent = h
	}
	m.hitsBuf = hits
	return hits
}

func (m *Manager) sameTokens(b int32, toks []int) bool {
	stored := m.tokens[int(b)*m.blockSize : (int(b)+1)*m.blockSize]
	for i, t := range toks {
		if stored[i] != int32(t) {
			return false
		}
	}
	return true
}

// CanAllocate reports whether Allocate(t, hits, numTokens) would succeed.
func (m *Manager) CanAllocate(t *Table, hits []int32, numTokens int) bool {
	need := m.blocksFor(numTokens) - len(t.Blocks) - len(hits)
	avail := m.numFree
	for _, b := range hits {
		if m.ref[b] == 0 {
			avail-- // taking it removes it from the free list
		}
	}
	return need <= avail
}

// Allocate grows t to cover numTokens token slots: first the cached prefix
// blocks hits (from Match, for an empty table), then fresh blocks, evicting
// the least recently used cached blocks when no uncached free block is
// left. It returns false, changing nothing, when there are too few blocks.
func (m *Manager) Allocate(t *Table, hits []int32, numTokens int) bool {
	if !m.CanAllocate(t, hits, numTokens) {
		return false
	}
	for _, b := range hits {
		m.take(b)
		t.Blocks = append(t.Blocks, b)
	}
	t.numCached += len(hits)
	for len(t.Blocks) < m.blocksFor(numTokens) {
		b := m.head
		m.take(b)
		if m.caching && m.hashed[b] {
			m.uncache(b)
			m.evicted++
		}
		t.Blocks = append(t.Blocks, b)
	}
	return true
}

// take adds a reference to b, removing it from the free list if it was free.
func (m *Manager) take(b int32) {
	if m.ref[b] == 0 {
		m.unlink(b)
	}
	m.ref[b]++
}

func (m *Manager) uncache(b int32) {
	if m.cached[m.hash[b]] == b {
		delete(m.cached, m.hash[b])
	}
	m.hashed[b] = false
}

// Commit registers in the prefix cache every block of t that is full of
// computed tokens (the first numComputed of tokens) and not registered yet.
// A block whose content is already cached under another block stays
// unregistered (it is freed as an ordinary block).
func (m *Manager) Commit(t *Table, tokens []int, numComputed int) {
	if !m.caching {
		return
	}
	full := min(numComputed/m.blockSize, len(t.Blocks))
	if full <= t.numCached {
		return
	}
	m.ensureHashes(t, tokens[:full*m.blockSize])
	for i := t.numCached; i < full; i++ {
		h, b := t.hashes[i], t.Blocks[i]
		if _, dup := m.cached[h]; dup || m.hashed[b] {
			continue
		}
		m.cached[h] = b
		m.hashed[b] = true
		m.hash[b] = h
		if i > 0 {
			m.parent[b] = t.hashes[i-1]
		} else {
			m.parent[b] = 0
		}
		dst := m.tokens[int(b)*m.blockSize : (int(b)+1)*m.blockSize]
		for j, tok := range tokens[i*m.blockSize : (i+1)*m.blockSize] {
			dst[j] = int32(tok)
		}
	}
	t.numCached = full
}

// Free drops t's references to its blocks and empties it (its hash chain is
// kept: the tokens it hashes have not changed). Blocks whose last reference
// goes are freed, the sequence's tail first in eviction order, so a later
// request sharing only the head of this prefix still finds it.
func (m *Manager) Free(t *Table) {
	for i := len(t.Blocks) - 1; i >= 0; i-- {
		b := t.Blocks[i]
		if m.ref[b] <= 0 {
			m.freedRef++
			continue
		}
		m.ref[b]--
		if m.ref[b] > 0 {
			continue
		}
		if m.caching && m.hashed[b] {
			m.pushBack(b)
		} else {
			m.pushFront(b)
		}
	}
	t.Blocks = t.Blocks[:0]
	t.numCached = 0
}

// Fork makes the empty table dst share src's full blocks covering the first
// numTokens tokens (n > 1 completions of one prompt): their reference counts
// go up, and the partial last block, which each sequence writes on its own,
// is left out, so dst recomputes at most blockSize-1 tokens. It returns how
// many tokens dst now holds.
func (m *Manager) Fork(dst, src *Table, numTokens int) int {
	n := min(numTokens/m.blockSize, len(src.Blocks))
	for _, b := range src.Blocks[:n] {
		m.take(b)
		dst.Blocks = append(dst.Blocks, b)
	}
	dst.hashes = append(dst.hashes[:0], src.hashes[:min(n, len(src.hashes))]...)
	dst.numCached = min(src.numCached, n)
	return n * m.blockSize
}

// Check verifies the allocator's invariants (for tests): the free list holds
// exactly the blocks with no reference, and the cache map and block hashes
// agree.
func (m *Manager) Check() error {
	seen := 0
	for b, p := m.head, int32(none); b != none; p, b = b, m.next[b] {
		if m.prev[b] != p {
			return fmt.Errorf("kvcache: free list broken at block %d", b)
		}
		if m.ref[b] != 0 {
			return fmt.Errorf("kvcache: free block %d has %d references", b, m.ref[b])
		}
		if seen++; seen > m.numBlocks {
			return errors.New("kvcache: free list has a cycle")
		}
	}
	if seen != m.numFree {
		return fmt.Errorf("kvcache: free list has %d blocks, counted %d", seen, m.numFree)
	}
	used := 0
	for _, r := range m.ref {
		if r < 0 {
			return errors.New("kvcache: negative reference count")
		}
		if r > 0 {
			used++
		}
	}
	if used+m.numFree != m.numBlocks {
		return fmt.Errorf("kvcache: %d used + %d free != %d blocks", used, m.numFree, m.numBlocks)
	}
	if m.freedRef != 0 {
		return fmt.Errorf("kvcache: %d frees of unreferenced blocks", m.freedRef)
	}
	for h, b := range m.cached {
		if !m.hashed[b] || m.hash[b] != h {
			return fmt.Errorf("kvcache: cache entry for block %d disagrees with the block", b)
		}
	}
	return nil
}

func (m *Manager) pushBack(b int32) {
	m.prev[b], m.next[b] = m.tail, none
	if m.tail != none {
		m.next[m.tail] = b
	} else {
		m.head = b
	}
	m.tail = b
	m.numFree++
}

func (m *Manager) pushFront(b int32) {
	m.prev[b], m.next[b] = none, m.head
	if m.head != none {
		m.prev[m.head] = b
	} else {
		m.tail = b
	}
	m.head = b
	m.numFree++
}

func (m *Manager) unlink(b int32) {
	p, n := m.prev[b], m.next[b]
	if p != none {
		m.next[p] = n
	} else {
		m.head = n
	}
	if n != none {
		m.prev[n] = p
	} else {
		m.tail = p
	}
	m.prev[b], m.next[b] = none, none
	m.numFree--
}
