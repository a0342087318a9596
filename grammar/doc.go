// Package grammar constrains generation to a formal language: a JSON
// Schema, any JSON object, a regular expression, a GBNF or Lark grammar or
// a list of choices. Each decoding step it gives the set of tokens that keep the
// output inside the language, as a bitset over the vocabulary.
//
// # Use
//
//	v, _ := grammar.VocabFromTokenizer(tok)        // once per tokenizer
//	g, err := grammar.Compile(spec, v, grammar.Limits{}) // or a Cache
//	m := g.NewMatcher()                            // one per sequence
//	mask := make([]uint64, v.MaskWords())
//	for {
//		m.FillMask(mask)   // allowed tokens (EOS when complete)
//		... set logits of tokens whose bit is 0 to -inf, sample ...
//		m.Accept(tok)
//		if m.IsTerminated() { break }
//	}
//
// Compile errors wrap ErrSyntax, ErrUnsupported, ErrLimit, ErrEmpty or
// ErrLeftRecursion: all are the request's fault (HTTP 400).
//
// # Design
//
// Every front end produces rules whose bodies are regular expressions over
// bytes and references to rules. Non-recursive rules are inlined where
// that keeps automata small, then each remaining rule becomes a minimal
// DFA over bytes plus calls; recursion (JSON values inside values, $ref
// cycles, recursive GBNF) stays as calls. A Matcher runs this recursive
// transition network as a pushdown automaton over bytes: its state is a
// set of stacks, persistent linked lists sharing their frames, so
// ambiguity costs one stack per live alternative and no backtracking.
// Left recursion is rejected at compile time.
//
// Token masks follow xgrammar's adaptive token-mask cache: for every DFA
// state a stack top can be in, a walk of the vocabulary's byte trie
// (pruned where no stack survives) splits the tokens into those accepted
// inside the state's rule whatever lies below it, those rejected, and the
// uncertain ones that leave the rule mid-token. That walk runs once per
// state and grammar, on first use. A step's mask is then the union, over
// the stack tops, of the accepted set plus the uncertain tokens re-checked
// against the real stack, each reusing its trie-order predecessor's
// prefix. With non-recursive structure inlined, most states have no
// uncertain tokens and a warm mask costs a few microseconds on Qwen3's
// 151,669-token vocabulary; a state's first mask (a full trie walk inside
// a free string) costs a few milliseconds.
//
// # Formats
//
// JSON Schema: see schema.go for the keywords. Regexes use Go's RE2
// syntax (regexp/syntax parses them; the automaton is built here) and
// match the whole output. GBNF is llama.cpp's (see gbnf.go); Lark EBNF a
// subset with %import common and %ignore (see lark.go).
//
// # Whitespace
//
// JSON output may hold, between two tokens, at most 4 spaces or tabs;
// after { [ and , and before } ] (and before the value) these may be
// followed by one line break (LF or CRLF) and at most 32 spaces or tabs of
// indentation; nothing follows the value. That admits compact and
// pretty-printed JSON and keeps a model that favours whitespace from
// looping in it. Spec.CompactJSON allows none.
//
// # Limits
//
// Limits bounds the source size, schema nesting, counted repetitions,
// automaton states (per rule before minimization and in total), rules and
// compile time; see DefaultLimits.
package grammar
