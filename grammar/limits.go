package grammar

import "time"

// Limits bound what one Compile may take, so that a hostile or careless
// request cannot stall the server or exhaust memory. Zero fields take the
// defaults of DefaultLimits.
type Limits struct {
	// MaxSpecBytes bounds the source text (schema JSON, regex, GBNF, or the
	// choices added up).
	MaxSpecBytes int
	// MaxSchemaDepth bounds the nesting of a JSON Schema.
	MaxSchemaDepth int
	// MaxRepeat bounds a counted repetition ({m,n}, maxLength, maxItems);
	// each count unrolls into automaton states.
	MaxRepeat int
	// MaxNFAStates bounds the intermediate automaton of any one rule.
	MaxNFAStates int
	// MaxStates bounds the states of the compiled grammar, summed over rules.
	MaxStates int
	// MaxRules bounds the number of rules (GBNF rules, $refs, generated).
	MaxRules int
	// CompileTimeout bounds the wall time of Compile.
	CompileTimeout time.Duration
	// MaxMaskCacheBytes bounds the memory a grammar's per-state token
	// masks take (a dense one is vocabulary/8 bytes); past it, masks of
	// further states are computed on every use instead of kept.
	MaxMaskCacheBytes int64
}

// DefaultLimits are generous for real schemas (tool definitions of a few
// hundred properties) and keep a worst case to about a second and some tens
// of MB.
var DefaultLimits = Limits{
	MaxSpecBytes:   1 << 20,
	MaxSchemaDepth: 64,
	MaxRepeat:      4096,
	MaxNFAStates:   200_000,
	MaxStates:      100_000,
	MaxRules:       10_000,
	CompileTimeout: 2 * time.Second,
	// 64 MiB: some 3,400 dense masks of a 151k vocabulary.
	MaxMaskCacheBytes: 64 << 20,
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	if l.MaxSpecBytes > 0 {
		d.MaxSpecBytes = l.MaxSpecBytes
	}
	if l.MaxSchemaDepth > 0 {
		d.MaxSchemaDepth = l.MaxSchemaDepth
	}
	if l.MaxRepeat > 0 {
		d.MaxRepeat = l.MaxRepeat
	}
	if l.MaxNFAStates > 0 {
		d.MaxNFAStates = l.MaxNFAStates
	}
	if l.MaxStates > 0 {
		d.MaxStates = l.MaxStates
	}
	if l.MaxRules > 0 {
		d.MaxRules = l.MaxRules
	}
	if l.CompileTimeout > 0 {
		d.CompileTimeout = l.CompileTimeout
	}
	if l.MaxMaskCacheBytes > 0 {
		d.MaxMaskCacheBytes = l.MaxMaskCacheBytes
	}
	return d
}
