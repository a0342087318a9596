// Package tokenizer implements Hugging Face tokenizers (tokenizer.json with a
// BPE model: byte-level GPT-2/Qwen/Llama-3 style and SentencePiece-style
// Llama-2/Mistral with byte fallback), tokenizer_config.json (special tokens,
// chat template), generation_config.json (stop ids) and an incremental
// detokenizer, with output identical to tokenizers/transformers.
package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/llmserve/llmserve/tokenizer/chattemplate"
)

var (
	// ErrMalformed: a file is not what its format says.
	ErrMalformed = errors.New("tokenizer: malformed file")
	// ErrUnsupported: a valid file uses a feature this package lacks.
	ErrUnsupported = errors.New("tokenizer: unsupported")
	// ErrNoChatTemplate: tokenizer_config.json has no chat_template.
	ErrNoChatTemplate = errors.New("tokenizer: no chat template")
)

// Mode picks whose rules build the pipeline from the files.
type Mode int

const (
	// ModeTransformers (the default) behaves as transformers v5's
	// AutoTokenizer, which is what vLLM uses: for LlamaTokenizer-class
	// SentencePiece-style files it replaces tokenizer.json's normalizer with
	// a Metaspace pre-tokenizer (prepend_scheme from legacy /
	// add_prefix_space) and takes add_bos_token/add_eos_token from
	// tokenizer_config.json. The two differ only for text that starts with
	// a space (or follows an added token with one).
	ModeTransformers Mode = iota
	// ModeTokenizers uses tokenizer.json exactly as the tokenizers library.
	ModeTokenizers
)

// Options configures loading.
type Options struct {
	Mode   Mode
	Logger *slog.Logger // nil: slog.Default()
}

// Tokenizer is safe for concurrent use.
type Tokenizer struct {
	model     *bpeModel
	norm      normalizer // nil: none
	pre       preTokenizer
	byteLevel bool // pieces are ByteLevel-mapped before the model
	decoder   decodeStep
	hasByteFB bool // decoder contains ByteFallback
	post      postTemplate

	added      []*addedToken
	addedByID  map[int]*addedToken
	addedByStr map[string]*addedToken
	rawMatch   *addedMatcher // normalized=false tokens, on raw text
	normMatch  *addedMatcher // normalized=true tokens, on normalized text
	vocabSize  int

	bosID   int // -1: none
	eosIDs  []int
	special map[string]any // bos_token, eos_token, ... for chat templates

	chat    *chattemplate.Template
	chatErr error // a template that failed to compile: reported on use

	pool sync.Pool // *workspace
}

type tokenizerFile struct {
	AddedTokens []struct {
		ID         *int   `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		LStrip     bool   `json:"lstrip"`
		RStrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
		Special    bool   `json:"special"`
	} `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         *modelFile      `json:"model"`
}

type modelFile struct {
	Type                    *string         `json:"type"`
	Dropout                 *float64        `json:"dropout"`
	UnkToken                *string         `json:"unk_token"`
	ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
	FuseUnk                 bool            `json:"fuse_unk"`
	ByteFallback            bool            `json:"byte_fallback"`
	IgnoreMerges            bool            `json:"ignore_merges"`
	Vocab                   json.RawMessage `json:"-"`
	Merges                  json.RawMessage `json:"-"`
}

// parseTokenizerFile splits tokenizer.json by hand so that the large
// model.vocab and model.merges skip encoding/json (most of the load time);
// the small parts still go through encoding/json.
func parseTokenizerFile(b []byte) (*tokenizerFile, error) {
	top, err := objectFields(b)
	if err != nil {
		return nil, fmt.Errorf("%w: tokenizer.json: expected a JSON object: %v", ErrMalformed, err)
	}
	var f tokenizerFile
	f.Normalizer = top["normalizer"]
	f.PreTokenizer = top["pre_tokenizer"]
	f.PostProcessor = top["post_processor"]
	f.Decoder = top["decoder"]
	if raw, ok := top["added_tokens"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &f.AddedTokens); err != nil {
			return nil, fmt.Errorf("%w: tokenizer.json: added_tokens: %v", ErrMalformed, err)
		}
	}
	rawModel, ok := top["model"]
	if !ok || isNull(rawModel) {
		return &f, nil
	}
	fields, err := objectFields(rawModel)
	if err != nil {
		return nil, fmt.Errorf("%w: tokenizer.json: model: expected an object: %v", ErrMalformed, err)
	}
	small := map[string]json.RawMessage{}
	for k, v := range fields {
		if k != "vocab" && k != "merges" {
			small[k] = v
		}
	}
	rebuilt, err := json.Marshal(small)
	if err != nil {
		return nil, fmt.Errorf("%w: tokenizer.json: model: %v", ErrMalformed, err)
	}
	f.Model = &modelFile{}
	if err := json.Unmarshal(rebuilt, f.Model); err != nil {
		return nil, fmt.Errorf("%w: tokenizer.json: model: %v", ErrMalformed, err)
	}
	f.Model.Vocab = fields["vocab"]
	f.Model.Merges = fields["merges"]
	return &f, nil
}

type tokenizerConfig struct {
	AddBOSToken             *bool           `json:"add_bos_token"`
	AddEOSToken             *bool           `json:"add_eos_token"`
	BOSToken                json.RawMessage `json:"bos_token"`
	EOSToken                json.RawMessage `json:"eos_token"`
	UnkToken                json.RawMessage `json:"unk_token"`
	PadToken                json.RawMessage `json:"pad_token"`
	AdditionalSpecialTokens json.RawMessage `json:"additional_special_tokens"`
	ChatTemplate            json.RawMessage `json:"chat_template"`
	TokenizerClass          string          `json:"tokenizer_class"`
	Legacy                  *bool           `json:"legacy"`
	AddPrefixSpace          *bool           `json:"add_prefix_space"`
}

// LoadDir loads tokenizer.json and tokenizer_config.json from a Hugging Face
// model directory, plus generation_config.json or config.json for stop ids
// and chat_template.jinja when present.
func LoadDir(dir string) (*Tokenizer, error) {
	return LoadDirOptions(dir, Options{})
}

// LoadDirOptions is LoadDir with options.
func LoadDirOptions(dir string, opts Options) (*Tokenizer, error) {
	tj, err := os.ReadFile(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	cfg, err := readOptional(filepath.Join(dir, "tokenizer_config.json"))
	if err != nil {
		return nil, err
	}
	t, err := New(tj, cfg, opts)
	if err != nil {
		return nil, err
	}
	if tpl, err := readOptional(filepath.Join(dir, "chat_template.jinja")); err != nil {
		return nil, err
	} else if tpl != nil {
		t.setChatTemplate(string(tpl))
	}
	gen, err := readOptional(filepath.Join(dir, "generation_config.json"))
	if err != nil {
		return nil, err
	}
	name := "generation_config.json"
	if gen == nil {
		// transformers derives the generation config from config.json.
		if gen, err = readOptional(filepath.Join(dir, "config.json")); err != nil {
			return nil, err
		}
		name = "config.json"
	}
	if gen != nil {
		if err := t.addEOSFrom(gen, name); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func readOptional(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return b, nil
}

func (t *Tokenizer) addEOSFrom(b []byte, name string) error {
	var g struct {
		EOS json.RawMessage `json:"eos_token_id"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, name, err)
	}
	if isNull(g.EOS) {
		return nil
	}
	var one int
	var many []int
	if json.Unmarshal(g.EOS, &one) == nil {
		many = []int{one}
	} else if json.Unmarshal(g.EOS, &many) != nil {
		return fmt.Errorf("%w: %s: eos_token_id: expected an integer or a list of integers, got %s", ErrMalformed, name, g.EOS)
	}
	for _, id := range many {
		if id < 0 {
			return fmt.Errorf("%w: %s: eos_token_id: negative id %d", ErrMalformed, name, id)
		}
		t.addEOS(id)
	}
	return nil
}

func (t *Tokenizer) addEOS(id int) {
	for _, e := range t.eosIDs {
		if e == id {
			return
		}
	}
	t.eosIDs = append(t.eosIDs, id)
}

// New builds a tokenizer from the contents of tokenizer.json and
// tokenizer_config.json (which may be nil).
func New(tokenizerJSON, configJSON []byte, opts Options) (t *Tokenizer, err error) {
	defer func() {
		// Belt and braces: malformed input must surface as an error.
		if r := recover(); r != nil {
			t, err = nil, fmt.Errorf("%w: %v", ErrMalformed, r)
		}
	}()
	f, err := parseTokenizerFile(tokenizerJSON)
	if err != nil {
		return nil, err
	}
	var cfg tokenizerConfig
	if configJSON != nil {
		if err := json.Unmarshal(configJSON, &cfg); err != nil {
			return nil, fmt.Errorf("%w: tokenizer_config.json: %v", ErrMalformed, err)
		}
	}
	if f.Model == nil {
		return nil, fmt.Errorf("%w: tokenizer.json: model: missing", ErrMalformed)
	}
	mj := f.Model
	if mj.Type != nil && *mj.Type != "BPE" {
		return nil, fmt.Errorf("%w: tokenizer.json: model.type: %q (only BPE)", ErrUnsupported, *mj.Type)
	}
	if mj.Type == nil && isNull(mj.Merges) {
		return nil, fmt.Errorf("%w: tokenizer.json: model.type: missing", ErrMalformed)
	}
	if mj.Dropout != nil && *mj.Dropout > 0 {
		return nil, fmt.Errorf("%w: tokenizer.json: model.dropout: BPE dropout", ErrUnsupported)
	}
	if isNull(mj.Vocab) {
		return nil, fmt.Errorf("%w: tokenizer.json: model.vocab: missing", ErrMalformed)
	}
	vocab, err := parseVocab(mj.Vocab)
	if err != nil {
		return nil, fmt.Errorf("%w: tokenizer.json: model.vocab: expected an object of token to id: %v", ErrMalformed, err)
	}
	var mergesJSON []byte
	if !isNull(mj.Merges) {
		mergesJSON = mj.Merges
	}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	model, err := newBPE(vocab, mergesJSON, mj.UnkToken, mj.FuseUnk, mj.ByteFallback, mj.IgnoreMerges,
		str(mj.ContinuingSubwordPrefix), str(mj.EndOfWordSuffix))
	if err != nil {
		return nil, fmt.Errorf("tokenizer.json: %w", err)
	}
	t = &Tokenizer{model: model, bosID: -1, addedByID: map[int]*addedToken{}, addedByStr: map[string]*addedToken{}}
	t.vocabSize = len(model.idToTok)

	if t.norm, err = buildNormalizer(f.Normalizer, "tokenizer.json: normalizer"); err != nil {
		return nil, err
	}
	if t.pre, t.byteLevel, err = buildPreTokenizer(f.PreTokenizer, "tokenizer.json: pre_tokenizer"); err != nil {
		return nil, err
	}
	if t.decoder, err = buildDecoder(f.Decoder, "tokenizer.json: decoder"); err != nil {
		return nil, err
	}
	if t.post, err = buildPostProcessor(f.PostProcessor, "tokenizer.json: post_processor"); err != nil {
		return nil, err
	}

	for i, a := range f.AddedTokens {
		if a.ID == nil || *a.ID < 0 || *a.ID >= 1<<24 {
			return nil, fmt.Errorf("%w: tokenizer.json: added_tokens[%d].id: expected a non-negative integer", ErrMalformed, i)
		}
		if a.Content == "" {
			return nil, fmt.Errorf("%w: tokenizer.json: added_tokens[%d].content: empty", ErrMalformed, i)
		}
		tok := &addedToken{id: *a.ID, content: a.Content, singleWord: a.SingleWord, lstrip: a.LStrip,
			rstrip: a.RStrip, normalized: a.Normalized, special: a.Special}
		t.added = append(t.added, tok)
		t.addedByID[tok.id] = tok
		t.addedByStr[tok.content] = tok
		if tok.id+1 > t.vocabSize {
			t.vocabSize = tok.id + 1
		}
	}

	if opts.Mode == ModeTransformers {
		if err := t.applyTransformers(&cfg); err != nil {
			return nil, err
		}
	}
	t.buildMatchers()
	t.hasByteFB = containsByteFallback(t.decoder)

	if err := t.readSpecials(&cfg); err != nil {
		return nil, err
	}
	if !isNull(cfg.ChatTemplate) {
		src, err := pickChatTemplate(cfg.ChatTemplate)
		if err != nil {
			return nil, err
		}
		t.setChatTemplate(src)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger.Debug("tokenizer loaded", "vocab", t.vocabSize, "merges", len(model.merges), "added", len(t.added), "byte_level", t.byteLevel)
	return t, nil
}

// SetChatTemplate replaces the chat template (vLLM's --chat-template);
// call it before the tokenizer is shared.
func (t *Tokenizer) SetChatTemplate(src string) error {
	t.setChatTemplate(src)
	return t.chatErr
}

func (t *Tokenizer) setChatTemplate(src string) {
	t.chat, t.chatErr = chattemplate.Compile(src)
	if t.chatErr != nil {
		t.chatErr = fmt.Errorf("tokenizer: chat_template: %w", t.chatErr)
	}
}

// pickChatTemplate accepts a string or [{"name": ..., "template": ...}]
// (transformers uses the one named "default").
func pickChatTemplate(raw json.RawMessage) (string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var list []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return "", fmt.Errorf("%w: tokenizer_config.json: chat_template: expected a string or a list of {name, template}", ErrMalformed)
	}
	for _, e := range list {
		if e.Name == "default" {
			return e.Template, nil
		}
	}
	if len(list) > 0 {
		return list[0].Template, nil
	}
	return "", fmt.Errorf("%w: tokenizer_config.json: chat_template: empty list", ErrMalformed)
}

func containsByteFallback(d decodeStep) bool {
	switch x := d.(type) {
	case byteFallbackDec:
		return true
	case decSeq:
		for _, s := range x {
			if containsByteFallback(s) {
				return true
			}
		}
	}
	return false
}

// applyTransformers rebuilds the pipeline as transformers v5's
// LlamaTokenizer does for SentencePiece-style files (see ModeTransformers).
func (t *Tokenizer) applyTransformers(cfg *tokenizerConfig) error {
	switch cfg.TokenizerClass {
	case "LlamaTokenizer", "LlamaTokenizerFast":
	default:
		return nil
	}
	// Byte-level files with this class name (some Llama-3 derivatives) are
	// left as the file says; only SentencePiece-style ones are rebuilt.
	if t.byteLevel || !t.model.byteFallback {
		return nil
	}
	addPrefix := cfg.AddPrefixSpace == nil || *cfg.AddPrefixSpace
	legacy := cfg.Legacy != nil && *cfg.Legacy
	scheme := prependNever
	if addPrefix {
		scheme = prependFirst
		if legacy {
			scheme = prependAlways
		}
	}
	t.norm = nil
	t.pre = metaspacePre{repl: "▁", scheme: scheme, split_: false}
	dec := decSeq{replaceDec{"▁", " "}, byteFallbackDec{}, fuseDec{}}
	if addPrefix {
		dec = append(dec, stripDec{' ', 1, 0})
	}
	t.decoder = dec
	addBOS := cfg.AddBOSToken == nil || *cfg.AddBOSToken
	addEOS := cfg.AddEOSToken != nil && *cfg.AddEOSToken
	t.post = postTemplate{}
	if addBOS {
		if id, ok := t.specialID(cfg.BOSToken); ok {
			t.post.prefix = []int{id}
		}
	}
	if addEOS {
		if id, ok := t.specialID(cfg.EOSToken); ok {
			t.post.suffix = []int{id}
		}
	}
	return nil
}

// tokenString reads a special token given as "str", {"content": "str"} or null.
func tokenString(raw json.RawMessage) (string, bool) {
	if isNull(raw) {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, s != ""
	}
	var obj struct {
		Content string `json:"content"`
	}
	if json.Unmarshal(raw, &obj) == nil && obj.Content != "" {
		return obj.Content, true
	}
	return "", false
}

func (t *Tokenizer) specialID(raw json.RawMessage) (int, bool) {
	s, ok := tokenString(raw)
	if !ok {
		return 0, false
	}
	return t.TokenToID(s)
}

func (t *Tokenizer) readSpecials(cfg *tokenizerConfig) error {
	t.special = map[string]any{}
	fields := []struct {
		name string
		raw  json.RawMessage
	}{{"bos_token", cfg.BOSToken}, {"eos_token", cfg.EOSToken}, {"unk_token", cfg.UnkToken}, {"pad_token", cfg.PadToken}}
	for _, f := range fields {
		if isNull(f.raw) {
			continue
		}
		s, ok := tokenString(f.raw)
		if !ok {
			return fmt.Errorf("%w: tokenizer_config.json: %s: expected a string or {\"content\": ...}", ErrMalformed, f.name)
		}
		t.special[f.name] = s
	}
	if !isNull(cfg.AdditionalSpecialTokens) {
		var list []json.RawMessage
		if err := json.Unmarshal(cfg.AdditionalSpecialTokens, &list); err != nil {
			return fmt.Errorf("%w: tokenizer_config.json: additional_special_tokens: expected a list", ErrMalformed)
		}
		var names []any
		for _, r := range list {
			if s, ok := tokenString(r); ok {
				names = append(names, s)
			}
		}
		t.special["additional_special_tokens"] = names
	}
	if s, ok := t.special["bos_token"].(string); ok {
		if id, ok := t.TokenToID(s); ok {
			t.bosID = id
		}
	}
	if s, ok := t.special["eos_token"].(string); ok {
		if id, ok := t.TokenToID(s); ok {
			t.addEOS(id)
		}
	}
	return nil
}

func (t *Tokenizer) buildMatchers() {
	t.rawMatch, t.normMatch = newAddedMatcher(), newAddedMatcher()
	for _, a := range t.added {
		if a.normalized && t.norm != nil {
			// tokenizers matches these against normalized text, so the
			// pattern is the normalized content.
			t.normMatch.add(t.norm.normalize(a.content), a)
		} else if a.normalized {
			t.normMatch.add(a.content, a)
		} else {
			t.rawMatch.add(a.content, a)
		}
	}
}

// VocabSize is the number of ids, added tokens included (max id + 1).
func (t *Tokenizer) VocabSize() int { return t.vocabSize }

// EOSTokenIDs are the stop ids: tokenizer_config's eos_token first, then
// generation_config.json's eos_token_id (int or list), deduplicated.
func (t *Tokenizer) EOSTokenIDs() []int { return append([]int(nil), t.eosIDs...) }

// BOSTokenID is tokenizer_config's bos_token, if any.
func (t *Tokenizer) BOSTokenID() (int, bool) { return t.bosID, t.bosID >= 0 }

// IDToToken returns the vocabulary string of id (added tokens first).
func (t *Tokenizer) IDToToken(id int) (string, bool) {
	if a, ok := t.addedByID[id]; ok {
		return a.content, true
	}
	if id >= 0 && id < len(t.model.idToTok) && t.model.hasID[id] {
		return t.model.idToTok[id], true
	}
	return "", false
}

// TokenToID returns the id of a vocabulary string (added tokens first).
func (t *Tokenizer) TokenToID(tok string) (int, bool) {
	if a, ok := t.addedByStr[tok]; ok {
		return a.id, true
	}
	id, ok := t.model.vocab[tok]
	return id, ok
}

// IsSpecial reports whether id is an added token marked special.
func (t *Tokenizer) IsSpecial(id int) bool {
	a, ok := t.addedByID[id]
	return ok && a.special
}

// HasChatTemplate reports whether a chat template was found.
func (t *Tokenizer) HasChatTemplate() bool { return t.chat != nil || t.chatErr != nil }

// ApplyChatTemplate renders the chat template as transformers'
// apply_chat_template(messages, tokenize=False, add_generation_prompt=...,
// **extra) does. Messages are OpenAI-style dicts; extra holds keyword
// arguments such as tools, documents or enable_thinking. Values of type
// json.RawMessage (anywhere inside) keep their key order, which tojson and
// dict iteration then preserve as Python would.
func (t *Tokenizer) ApplyChatTemplate(messages []map[string]any, addGenerationPrompt bool, extra map[string]any) (string, error) {
	if t.chatErr != nil {
		return "", t.chatErr
	}
	if t.chat == nil {
		return "", ErrNoChatTemplate
	}
	vars := make(map[string]any, len(t.special)+len(extra)+2)
	for k, v := range t.special {
		vars[k] = v
	}
	msgs := make([]any, len(messages))
	for i, m := range messages {
		msgs[i] = m
	}
	vars["messages"] = msgs
	vars["add_generation_prompt"] = addGenerationPrompt
	for k, v := range extra {
		vars[k] = v
	}
	return t.chat.Render(vars)
}

// TokenText is the text of one token as logprobs show it: the decode of
// that id alone (U+FFFD for a partial UTF-8 byte), as vLLM does.
func (t *Tokenizer) TokenText(id int) string {
	return t.Decode([]int{id}, false)
}

// ------------------------------------------------------------------ encode

type cacheEntry struct{ off, n uint32 }

// workspace is per-call scratch, pooled so encoding does not allocate per word.
type workspace struct {
	syms  []int32
	ranks []uint64
	heap  []mergeItem
	segs  []segment
	nsegs []segment
	cache map[string]cacheEntry
	arena []int32
}

const (
	cacheMaxEntries = 8192
	cacheMaxWordLen = 256
)

func (t *Tokenizer) getWS() *workspace {
	if ws, ok := t.pool.Get().(*workspace); ok {
		return ws
	}
	return &workspace{cache: make(map[string]cacheEntry, 1024)}
}

// Encode returns the ids of text: added tokens matched first, then
// normalizer, pre-tokenizer and BPE; addSpecialTokens applies the
// post-processor (e.g. a BOS). Invalid UTF-8 is first replaced by U+FFFD.
func (t *Tokenizer) Encode(text string, addSpecialTokens bool) []int {
	ids := make([]int, 0, len(text)/4+4)
	if addSpecialTokens {
		ids = append(ids, t.post.prefix...)
	}
	if !utf8.ValidString(text) {
		text = string(appendLossyUTF8(nil, []byte(text)))
	}
	ws := t.getWS()
	ids = t.encodeText(ids, text, ws)
	t.pool.Put(ws)
	if addSpecialTokens {
		ids = append(ids, t.post.suffix...)
	}
	return ids
}

func (t *Tokenizer) encodeText(ids []int, text string, ws *workspace) []int {
	segs := t.rawMatch.split(ws.segs[:0], text)
	ws.segs = segs
	for _, sg := range segs {
		if sg.id >= 0 {
			ids = append(ids, sg.id)
			continue
		}
		s := text[sg.start:sg.end]
		if t.norm != nil {
			s = t.norm.normalize(s)
		}
		if t.normMatch.empty() {
			ids = t.encodePiece(ids, piece{s, sg.start == 0}, ws)
			continue
		}
		nsegs := t.normMatch.split(ws.nsegs[:0], s)
		ws.nsegs = nsegs
		for _, ns := range nsegs {
			if ns.id >= 0 {
				ids = append(ids, ns.id)
				continue
			}
			ids = t.encodePiece(ids, piece{s[ns.start:ns.end], sg.start == 0 && ns.start == 0}, ws)
		}
	}
	return ids
}

func (t *Tokenizer) encodePiece(ids []int, p piece, ws *workspace) []int {
	if p.s == "" {
		return ids
	}
	if t.pre == nil {
		return t.encodeWord(ids, p.s, ws)
	}
	n := len(ids)
	err := t.pre.split(p, func(q piece) {
		ids = t.encodeWord(ids, q.s, ws)
	})
	if err != nil {
		// Only a regex engine failure gets here; encode the text as one
		// word rather than dropping it.
		return t.encodeWord(ids[:n], p.s, ws)
	}
	return ids
}

func (t *Tokenizer) encodeWord(ids []int, w string, ws *workspace) []int {
	if w == "" {
		return ids
	}
	m := t.model
	if e, ok := ws.cache[w]; ok {
		for _, id := range ws.arena[e.off : e.off+e.n] {
			ids = append(ids, int(id))
		}
		return ids
	}
	if m.ignoreMerges {
		key := w
		if t.byteLevel {
			key = byteLevelString(w)
		}
		if id, ok := m.vocab[key]; ok {
			return append(ids, id)
		}
	}
	syms := ws.syms[:0]
	if t.byteLevel {
		syms = m.initialByteLevel(w, syms)
	} else {
		syms = m.initialChars(w, syms)
	}
	syms = m.mergeAll(syms, ws)
	ws.syms = syms
	for _, id := range syms {
		ids = append(ids, int(id))
	}
	if len(w) <= cacheMaxWordLen {
		if len(ws.cache) >= cacheMaxEntries || len(ws.arena)+len(syms) > 1<<20 {
			clear(ws.cache)
			ws.arena = ws.arena[:0]
		}
		off := len(ws.arena)
		ws.arena = append(ws.arena, syms...)
		ws.cache[strings.Clone(w)] = cacheEntry{uint32(off), uint32(len(syms))}
	}
	return ids
}

// ------------------------------------------------------------------ decode

// Decode returns the text of ids through the decoder chain, as
// tokenizers' decode does; unknown ids are skipped.
func (t *Tokenizer) Decode(ids []int, skipSpecialTokens bool) string {
	toks := make([]string, 0, len(ids))
	toks = t.appendTokens(toks, ids, skipSpecialTokens)
	return t.decodeTokens(toks)
}

func (t *Tokenizer) appendTokens(toks []string, ids []int, skip bool) []string {
	for _, id := range ids {
		if a, ok := t.addedByID[id]; ok {
			if skip && a.special {
				continue
			}
			toks = append(toks, a.content)
			continue
		}
		if id >= 0 && id < len(t.model.idToTok) && t.model.hasID[id] {
			toks = append(toks, t.model.idToTok[id])
		}
	}
	return toks
}

func (t *Tokenizer) decodeTokens(toks []string) string {
	if t.decoder == nil {
		return strings.Join(toks, " ")
	}
	if _, ok := t.decoder.(byteLevelDec); ok {
		// Fast path: no intermediate strings.
		var raw []byte
		for _, tk := range toks {
			raw = appendByteLevelDecoded(raw, tk)
		}
		if utf8.Valid(raw) {
			return string(raw)
		}
		return string(appendLossyUTF8(nil, raw))
	}
	return strings.Join(t.decoder.decodeChain(toks), "")
}
