package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ErrWorkload reports a bad workload specification or file.
var ErrWorkload = errors.New("bench: bad workload")

// Item is one request to send.
type Item struct {
	Prompt    string `json:"prompt"`
	MaxTokens int    `json:"max_tokens"`
	// PromptTokens is an estimate used only when the server reports no
	// usage; 0 means unknown.
	PromptTokens int `json:"-"`
}

// Workload yields the i-th request of a level. Implementations are
// deterministic in i (so every level sends the same requests) and safe for
// concurrent use.
type Workload interface {
	Item(i int) Item
	// Len is the number of distinct items (0 = unbounded, generated).
	Len() int
}

// Fixed sends the same prompt every time (the reference's --prompt).
type Fixed struct {
	Prompt    string
	MaxTokens int
}

func (f Fixed) Item(int) Item {
	return Item{Prompt: f.Prompt, MaxTokens: f.MaxTokens, PromptTokens: EstimateTokens(f.Prompt)}
}
func (f Fixed) Len() int { return 1 }

// Range is an inclusive integer range, written "N" or "LO:HI".
type Range struct{ Lo, Hi int }

// ParseRange parses "128" or "100:200".
func ParseRange(s string) (Range, error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), ":")
	a, err := strconv.Atoi(strings.TrimSpace(lo))
	if err != nil {
		return Range{}, fmt.Errorf("%w: range %q: %v", ErrWorkload, s, err)
	}
	b := a
	if isRange {
		if b, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil {
			return Range{}, fmt.Errorf("%w: range %q: %v", ErrWorkload, s, err)
		}
	}
	if a < 1 || b < a {
		return Range{}, fmt.Errorf("%w: range %q must be positive with LO <= HI", ErrWorkload, s)
	}
	return Range{a, b}, nil
}

func (r Range) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(r.Lo)
	}
	return strconv.Itoa(r.Lo) + ":" + strconv.Itoa(r.Hi)
}

func (r Range) pick(rng *rand.Rand) int {
	if r.Hi <= r.Lo {
		return r.Lo
	}
	return r.Lo + rng.IntN(r.Hi-r.Lo+1)
}

// Random makes prompts of InputLen words drawn from a list of common
// English words, each about one token in BPE vocabularies (so a word count
// is a token-count estimate without a tokenizer), asking for OutputLen
// tokens. Item i depends only on Seed and i.
type Random struct {
	InputLen, OutputLen Range
	Seed                uint64
}

func (w Random) Item(i int) Item {
	rng := rand.New(rand.NewPCG(w.Seed, uint64(i)))
	n := w.InputLen.pick(rng)
	var b strings.Builder
	b.Grow(n * 6)
	for k := range n {
		if k > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(words[rng.IntN(len(words))])
	}
	return Item{Prompt: b.String(), MaxTokens: w.OutputLen.pick(rng), PromptTokens: n}
}
func (w Random) Len() int { return 0 }

// List cycles through loaded items.
type List []Item

func (l List) Item(i int) Item { return l[i%len(l)] }
func (l List) Len() int        { return len(l) }

// Shuffled returns a copy of l in an order fixed by seed.
func (l List) Shuffled(seed uint64) List {
	out := append(List(nil), l...)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// LoadFile reads a workload file: JSONL of {"prompt", "max_tokens"}, a JSON
// array of the same, or a ShareGPT JSON array ({"conversations": [{"from":
// "human", "value"}, {"from": "gpt", "value"}]}), whose first human turn is
// the prompt and whose first answer's estimated length is max_tokens.
// defaultMax fills max_tokens where the file gives none.
func LoadFile(path string, defaultMax int) (List, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrWorkload, err)
	}
	defer f.Close()
	return ReadWorkload(f, defaultMax)
}

// ReadWorkload is LoadFile on a reader.
func ReadWorkload(r io.Reader, defaultMax int) (List, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrWorkload, err)
	}
	data = bytes.TrimSpace(data)
	var recs []rawRecord
	if len(data) > 0 && data[0] == '[' {
		if err := json.Unmarshal(data, &recs); err != nil {
			return nil, fmt.Errorf("%w: JSON array: %v", ErrWorkload, err)
		}
	} else {
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 0, 64<<10), 64<<20)
		for line := 1; sc.Scan(); line++ {
			t := bytes.TrimSpace(sc.Bytes())
			if len(t) == 0 {
				continue
			}
			var rec rawRecord
			if err := json.Unmarshal(t, &rec); err != nil {
				return nil, fmt.Errorf("%w: line %d: %v", ErrWorkload, line, err)
			}
			recs = append(recs, rec)
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrWorkload, err)
		}
	}
	var out List
	for _, rec := range recs {
		if it, ok := rec.item(defaultMax); ok {
			out = append(out, it)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no usable prompts", ErrWorkload)
	}
	return out, nil
}

type rawRecord struct {
	Prompt        string `json:"prompt"`
	MaxTokens     int    `json:"max_tokens"`
	OutputLen     int    `json:"output_len"`
	Conversations []struct {
		From  string `json:"from"`
		Role  string `json:"role"`
		Value string `json:"value"`
		Text  string `json:"content"`
	} `json:"conversations"`
}

func (r rawRecord) item(defaultMax int) (Item, bool) {
	maxTok := r.MaxTokens
	if maxTok == 0 {
		maxTok = r.OutputLen
	}
	if r.Prompt != "" {
		if maxTok <= 0 {
			maxTok = defaultMax
		}
		return Item{Prompt: r.Prompt, MaxTokens: maxTok, PromptTokens: EstimateTokens(r.Prompt)}, true
	}
	// ShareGPT: the first user turn and the answer after it.
	for i, c := range r.Conversations {
		who := strings.ToLower(c.From + c.Role)
		if who != "human" && who != "user" {
			continue
		}
		prompt := c.Value + c.Text
		if strings.TrimSpace(prompt) == "" {
			return Item{}, false
		}
		if maxTok <= 0 && i+1 < len(r.Conversations) {
			next := r.Conversations[i+1]
			maxTok = EstimateTokens(next.Value + next.Text)
		}
		if maxTok <= 0 {
			maxTok = defaultMax
		}
		return Item{Prompt: prompt, MaxTokens: maxTok, PromptTokens: EstimateTokens(prompt)}, true
	}
	return Item{}, false
}

// EstimateTokens guesses a token count without a tokenizer: about four
// characters a token for English-like text, at least one for non-empty text.
func EstimateTokens(s string) int {
	n := utf8.RuneCountInString(s)
	if n == 0 {
		return 0
	}
	return max(1, (n+3)/4)
}

// words are short, common English words: in GPT-2-style and Qwen vocabularies
// " word" is one token, so random prompts have about one token per word.
var words = strings.Fields(`the of and to in is was for on that with as by at
from his her he she it they we you this are be or an not but had have
has were which one all their there been would will more when who no if out
so said what up its about into than them can only other new some time could
these two may then do first any my now such like our over man me even most
made after also did many before must through back years where much your way
well down should because each just those people how too little state good
very make world still own see men work long get here between both life being
under never day same another know while last might us great old year off come
since against go came right used take three states himself few house use
during without again place around however home small found thought went say
part once general high upon school every does got united left number course
war until always away something fact though water less public put think
almost hand enough far took head yet government system better set told
nothing night end why called find look asked later knew point next city
business give group toward young let room president side social present
given several order national possible rather second per face among form often
early white case become large big need four within felt along children saw
best church ever least power development light thing seemed family interest
want members mind country area others done turned although open problem sense
service kind began thus help means`)
