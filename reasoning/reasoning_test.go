package reasoning

import "testing"

func TestParse(t *testing.T) {
	for _, c := range []struct {
		parser           string
		opts             Options
		text             string
		reasoning, conte string
	}{
		{"qwen3", Options{}, "<think>\nLet me think.\n</think>\n\nThe answer is 4.", "\nLet me think.\n", "The answer is 4."},
		{"qwen3", Options{}, "The answer is 4.", "", "The answer is 4."},
		{"qwen3", Options{}, "\n<think>x</think>y", "x", "y"},
		{"qwen3", Options{}, "<think>cut short", "cut short", ""},
		{"qwen3", Options{}, "<think></think>", "", ""},
		{"qwen3", Options{}, "no think </think> here", "", "no think </think> here"},
		{"qwen3", Options{}, "  <thin", "", "  <thin"},
		{"qwen3", Options{}, "a <think>b</think>", "", "a <think>b</think>"},
		{"qwen3", Options{StartInReasoning: true}, "hmm</think>ok", "hmm", "ok"},
		{"deepseek_r1", Options{}, "Okay, so 2+2.\n</think>\n\n**4**", "Okay, so 2+2.\n", "**4**"},
		{"deepseek_r1", Options{}, "<think>\nrepeated tag</think>x", "\nrepeated tag", "x"},
		{"deepseek_r1", Options{}, "all reasoning, cut", "all reasoning, cut", ""},
		{"deepseek_r1", Options{}, "a</think>b</think>c", "a", "b</think>c"},
		{"deepseek_r1", Options{}, "", "", ""},
		{"qwen3", Options{}, "<think>日本語</think>\n👍", "日本語", "👍"},
	} {
		p, err := New(c.parser, c.opts)
		if err != nil {
			t.Fatal(err)
		}
		r, content := p.Parse(c.text)
		if r != c.reasoning || content != c.conte {
			t.Errorf("%s %q: got (%q, %q), want (%q, %q)", c.parser, c.text, r, content, c.reasoning, c.conte)
		}
		checkSplits(t, p, c.text)
	}
	if _, err := New("nope", Options{}); err == nil {
		t.Fatal("unknown parser accepted")
	}
}

// checkSplits feeds text cut at every byte position (and byte by byte)
// and checks the reassembled deltas equal Parse's result.
func checkSplits(t *testing.T, p Parser, text string) {
	t.Helper()
	wr, wc := p.Parse(text)
	try := func(chunks []string) {
		s := p.NewStream()
		var r, c string
		for _, ch := range chunks {
			d := s.Add(ch)
			r, c = r+d.Reasoning, c+d.Content
		}
		d := s.Finish()
		r, c = r+d.Reasoning, c+d.Content
		if r != wr || c != wc {
			t.Fatalf("%q split %q: got (%q, %q), want (%q, %q)", text, chunks, r, c, wr, wc)
		}
	}
	for i := 0; i <= len(text); i++ {
		try([]string{text[:i], text[i:]})
		for j := i; j <= len(text); j += 3 {
			try([]string{text[:i], text[i:j], text[j:]})
		}
	}
	bs := make([]string, len(text))
	for i := 0; i < len(text); i++ {
		bs[i] = text[i : i+1]
	}
	try(bs)
}

func TestInReasoning(t *testing.T) {
	p, _ := New("qwen3", Options{})
	s := p.NewStream()
	s.Add("<thi")
	if s.InReasoning() {
		t.Fatal("undecided counted as reasoning")
	}
	s.Add("nk>x")
	if !s.InReasoning() {
		t.Fatal("not in reasoning after <think>")
	}
	s.Add("</think>")
	if s.InReasoning() {
		t.Fatal("still in reasoning after </think>")
	}
	p, _ = New("deepseek_r1", Options{})
	if !p.NewStream().InReasoning() {
		t.Fatal("deepseek_r1 does not start in reasoning")
	}
}

func FuzzStream(f *testing.F) {
	f.Add("<think>a</think> b", uint16(4), true)
	f.Add("x</think>\n\ny", uint16(2), false)
	f.Fuzz(func(t *testing.T, text string, cut uint16, startIn bool) {
		for _, name := range Names() {
			p, _ := New(name, Options{StartInReasoning: startIn})
			wr, wc := p.Parse(text)
			i := int(cut) % (len(text) + 1)
			s := p.NewStream()
			d1, d2, d3 := s.Add(text[:i]), s.Add(text[i:]), s.Finish()
			if r, c := d1.Reasoning+d2.Reasoning+d3.Reasoning, d1.Content+d2.Content+d3.Content; r != wr || c != wc {
				t.Fatalf("%s %q at %d: (%q, %q), Parse (%q, %q)", name, text, i, r, c, wr, wc)
			}
		}
	})
}
