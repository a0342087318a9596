// Package sampletest holds test helpers for code that drives sample's
// logits processors.
package sampletest

import "fmt"

// ScriptMatcher is a sample.TokenMatcher that allows exactly its script,
// token by token, then only the end of the sequence.
type ScriptMatcher struct {
	Script []int
	pos    int
}

// FillMask implements sample.TokenMatcher.
func (m *ScriptMatcher) FillMask(allowed []uint64) {
	clear(allowed)
	if m.pos < len(m.Script) {
		t := m.Script[m.pos]
		allowed[t>>6] |= 1 << (t & 63)
	}
}

// Accept implements sample.TokenMatcher.
func (m *ScriptMatcher) Accept(tok int) error {
	if m.pos >= len(m.Script) || m.Script[m.pos] != tok {
		return fmt.Errorf("token %d not allowed at %d", tok, m.pos)
	}
	m.pos++
	return nil
}

// CanEnd implements sample.TokenMatcher.
func (m *ScriptMatcher) CanEnd() bool { return m.pos == len(m.Script) }
