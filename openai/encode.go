package openai

import (
	"encoding/json"
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/llmserve/llmserve/engine"
)

// The encoders below append JSON to a caller-owned buffer so that streaming
// a token costs no allocation beyond the engine's own output.

const hex = "0123456789abcdef"

// AppendString appends s as a JSON string (invalid UTF-8 becomes U+FFFD, as
// encoding/json does).
func AppendString[T string | []byte](b []byte, s T) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := decodeRune(s, i)
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 break JavaScript string literals.
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// decodeRune is utf8.DecodeRune for either string type, without converting.
func decodeRune[T string | []byte](s T, i int) (rune, int) {
	c0 := s[i]
	var n int
	var min rune
	var r rune
	switch {
	case c0&0xE0 == 0xC0:
		n, min, r = 2, 0x80, rune(c0&0x1F)
	case c0&0xF0 == 0xE0:
		n, min, r = 3, 0x800, rune(c0&0x0F)
	case c0&0xF8 == 0xF0:
		n, min, r = 4, 0x10000, rune(c0&0x07)
	default:
		return utf8.RuneError, 1
	}
	if i+n > len(s) {
		return utf8.RuneError, 1
	}
	for k := 1; k < n; k++ {
		c := s[i+k]
		if c&0xC0 != 0x80 {
			return utf8.RuneError, 1
		}
		r = r<<6 | rune(c&0x3F)
	}
	if r < min || r > utf8.MaxRune || (r >= 0xD800 && r <= 0xDFFF) {
		return utf8.RuneError, 1
	}
	return r, n
}

// AppendLogprob appends a logprob; -inf and NaN become -9999 as in vLLM.
func AppendLogprob(b []byte, f float32) []byte {
	if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) || f < -9999 {
		f = -9999
	}
	return strconv.AppendFloat(b, float64(f), 'g', -1, 32)
}

// AppendAny appends a stop reason or other small value: nil, string or int
// without allocating, anything else through encoding/json.
func AppendAny(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...)
	case string:
		return AppendString(b, x)
	case int:
		return strconv.AppendInt(b, int64(x), 10)
	case int32:
		return strconv.AppendInt(b, int64(x), 10)
	case int64:
		return strconv.AppendInt(b, x, 10)
	}
	j, err := json.Marshal(v)
	if err != nil {
		return append(b, "null"...)
	}
	return append(b, j...)
}

// AppendUsage appends u as a JSON object.
func AppendUsage(b []byte, u *Usage) []byte {
	b = append(b, `{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(u.PromptTokens), 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, int64(u.CompletionTokens), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(u.TotalTokens), 10)
	if u.PromptTokensDetails != nil {
		b = append(b, `,"prompt_tokens_details":{"cached_tokens":`...)
		b = strconv.AppendInt(b, int64(u.PromptTokensDetails.CachedTokens), 10)
		b = append(b, '}')
	}
	return append(b, '}')
}

// Choice is one choice of a completion, chat completion or stream chunk.
type Choice struct {
	Index        int
	Role         string // chat: "assistant" on the first chunk (and in full responses)
	Text         []byte
	WantLogprobs bool
	Logprobs     []engine.TokenLogprob
	// TextOffset is where Text starts in the whole completion (completions
	// logprobs' text_offset); the encoder advances it past Text's tokens.
	TextOffset   int
	FinishReason string
	StopReason   any
	// WantTokenIDs writes token_ids (vLLM's return_token_ids): the ids
	// generated since the previous chunk (all of them in a full response),
	// and for completions prompt_token_ids when PromptTokenIDs is non-nil.
	WantTokenIDs   bool
	TokenIDs       []int
	PromptTokenIDs []int
}

// Kind selects the response shape an Encoder writes.
type Kind uint8

const (
	KindCompletion      Kind = iota // "text_completion" (full response and chunk alike)
	KindChat                        // "chat.completion"
	KindChatChunk                   // "chat.completion.chunk"
	KindCompletionChunk             // "text_completion", streamed
)

// Encoder writes responses and chunks of one request. Not safe for concurrent use.
type Encoder struct {
	kind   Kind
	prefix []byte
	// TokenText names tokens in logprobs; nil or AsTokenIDs renders "token_id:N".
	TokenText  func(id int) string
	AsTokenIDs bool
	// PromptTokenIDs, when non-nil, is written as the chat response's (or
	// first chunk's) top-level prompt_token_ids; the caller clears it after.
	PromptTokenIDs []int
	scratch        []byte
}

// NewEncoder precomputes the envelope shared by every chunk of a request.
func NewEncoder(kind Kind, id string, created int64, model string) *Encoder {
	obj := "text_completion"
	switch kind {
	case KindChat:
		obj = "chat.completion"
	case KindChatChunk:
		obj = "chat.completion.chunk"
	}
	b := append([]byte(nil), `{"id":`...)
	b = AppendString(b, id)
	b = append(b, `,"object":"`...)
	b = append(b, obj...)
	b = append(b, `","created":`...)
	b = strconv.AppendInt(b, created, 10)
	b = append(b, `,"model":`...)
	b = AppendString(b, model)
	b = append(b, `,"choices":[`...)
	return &Encoder{kind: kind, prefix: b}
}

func (e *Encoder) chat() bool { return e.kind == KindChat || e.kind == KindChatChunk }

func (e *Encoder) appendTokenName(b []byte, id int) []byte {
	if e.AsTokenIDs || e.TokenText == nil {
		b = append(b, `"token_id:`...)
		b = strconv.AppendInt(b, int64(id), 10)
		return append(b, '"')
	}
	return AppendString(b, e.TokenText(id))
}

func (e *Encoder) tokenName(id int) string {
	if e.AsTokenIDs || e.TokenText == nil {
		e.scratch = append(e.scratch[:0], "token_id:"...)
		e.scratch = strconv.AppendInt(e.scratch, int64(id), 10)
		return string(e.scratch)
	}
	return e.TokenText(id)
}

// Append appends one response or chunk with choices and, when usage is
// non-nil, the usage object. It advances each choice's TextOffset.
func (e *Encoder) Append(b []byte, choices []Choice, usage *Usage) []byte {
	b = append(b, e.prefix...)
	for i := range choices {
		if i > 0 {
			b = append(b, ',')
		}
		b = e.appendChoice(b, &choices[i])
	}
	b = append(b, ']')
	if usage != nil {
		b = append(b, `,"usage":`...)
		b = AppendUsage(b, usage)
	}
	if e.chat() && e.PromptTokenIDs != nil {
		b = append(b, `,"prompt_token_ids":`...)
		b = AppendInts(b, e.PromptTokenIDs)
	}
	return append(b, '}')
}

// AppendInts appends ids as a JSON array.
func AppendInts(b []byte, ids []int) []byte {
	b = append(b, '[')
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(id), 10)
	}
	return append(b, ']')
}

func (e *Encoder) appendChoice(b []byte, c *Choice) []byte {
	b = append(b, `{"index":`...)
	b = strconv.AppendInt(b, int64(c.Index), 10)
	switch e.kind {
	case KindChat, KindChatChunk:
		if e.kind == KindChat {
			b = append(b, `,"message":{`...)
		} else {
			b = append(b, `,"delta":{`...)
		}
		comma := false
		if c.Role != "" {
			b = append(b, `"role":`...)
			b = AppendString(b, c.Role)
			comma = true
		}
		if c.Role != "" || len(c.Text) > 0 || e.kind == KindChat {
			if comma {
				b = append(b, ',')
			}
			b = append(b, `"content":`...)
			b = AppendString(b, c.Text)
		}
		b = append(b, '}')
	default:
		b = append(b, `,"text":`...)
		b = AppendString(b, c.Text)
	}
	b = append(b, `,"logprobs":`...)
	switch {
	case !c.WantLogprobs:
		b = append(b, "null"...)
	case e.chat():
		b = e.appendChatLogprobs(b, c.Logprobs)
	default:
		b = e.appendCompletionLogprobs(b, c)
	}
	b = append(b, `,"finish_reason":`...)
	if c.FinishReason == "" {
		b = append(b, "null"...)
	} else {
		b = AppendString(b, c.FinishReason)
	}
	b = append(b, `,"stop_reason":`...)
	b = AppendAny(b, c.StopReason)
	if c.WantTokenIDs {
		if !e.chat() && c.PromptTokenIDs != nil {
			b = append(b, `,"prompt_token_ids":`...)
			b = AppendInts(b, c.PromptTokenIDs)
		}
		b = append(b, `,"token_ids":`...)
		b = AppendInts(b, c.TokenIDs)
	}
	return append(b, '}')
}

func (e *Encoder) appendBytes(b []byte, s string) []byte {
	b = append(b, '[')
	for i := 0; i < len(s); i++ {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(s[i]), 10)
	}
	return append(b, ']')
}

func (e *Encoder) appendChatTop(b []byte, id int, lp float32) []byte {
	name := e.tokenName(id)
	b = append(b, `{"token":`...)
	b = AppendString(b, name)
	b = append(b, `,"logprob":`...)
	b = AppendLogprob(b, lp)
	b = append(b, `,"bytes":`...)
	return e.appendBytes(b, name)
}

func (e *Encoder) appendChatLogprobs(b []byte, lps []engine.TokenLogprob) []byte {
	b = append(b, `{"content":[`...)
	for i := range lps {
		if i > 0 {
			b = append(b, ',')
		}
		b = e.appendChatTop(b, lps[i].TokenID, lps[i].Logprob)
		b = append(b, `,"top_logprobs":[`...)
		for j, t := range lps[i].Top {
			if j > 0 {
				b = append(b, ',')
			}
			b = e.appendChatTop(b, t.TokenID, t.Logprob)
			b = append(b, '}')
		}
		b = append(b, "]}"...)
	}
	return append(b, "]}"...)
}

func (e *Encoder) appendCompletionLogprobs(b []byte, c *Choice) []byte {
	lps := c.Logprobs
	b = append(b, `{"text_offset":[`...)
	for i := range lps {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(c.TextOffset), 10)
		c.TextOffset += len(e.tokenName(lps[i].TokenID))
	}
	b = append(b, `],"token_logprobs":[`...)
	for i := range lps {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendLogprob(b, lps[i].Logprob)
	}
	b = append(b, `],"tokens":[`...)
	for i := range lps {
		if i > 0 {
			b = append(b, ',')
		}
		b = e.appendTokenName(b, lps[i].TokenID)
	}
	b = append(b, `],"top_logprobs":[`...)
	for i := range lps {
		if i > 0 {
			b = append(b, ',')
		}
		// The sampled token first, then the alternatives (as vLLM does).
		b = append(b, '{')
		b = e.appendTokenName(b, lps[i].TokenID)
		b = append(b, ':')
		b = AppendLogprob(b, lps[i].Logprob)
		for _, t := range lps[i].Top {
			if t.TokenID == lps[i].TokenID {
				continue
			}
			b = append(b, ',')
			b = e.appendTokenName(b, t.TokenID)
			b = append(b, ':')
			b = AppendLogprob(b, t.Logprob)
		}
		b = append(b, '}')
	}
	return append(b, "]}"...)
}
