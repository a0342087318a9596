package chattemplate

import (
	"encoding/json"
	"errors"
	"github.com/llmserve/llmserve/internal/shareddata"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAgainstJinja2 renders the cases of testdata/cases.json (made by
// testdata/gen.py with Python's jinja2 set up as transformers does) and
// compares byte for byte.
func TestAgainstJinja2(t *testing.T) {
	var cases []struct {
		Template string                     `json:"template"`
		Case     map[string]json.RawMessage `json:"case"`
		Text     *string                    `json:"text"`
		Error    *string                    `json:"error"`
	}
	b, err := os.ReadFile("testdata/cases.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	sources := map[string]string{}
	custom, err := os.ReadFile("testdata/custom.jinja")
	if err != nil {
		t.Fatal(err)
	}
	sources["custom"] = string(custom)
	cfg, err := os.ReadFile(filepath.Join(shareddata.Dir(t), "tokenizers", "qwen3", "tokenizer_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var qc struct {
		ChatTemplate string `json:"chat_template"`
	}
	if err := json.Unmarshal(cfg, &qc); err != nil {
		t.Fatal(err)
	}
	sources["qwen3"] = qc.ChatTemplate

	for _, c := range cases {
		var name string
		_ = json.Unmarshal(c.Case["name"], &name)
		t.Run(c.Template+"/"+name, func(t *testing.T) {
			tpl, err := Compile(sources[c.Template])
			if err != nil {
				t.Fatal(err)
			}
			vars := map[string]any{}
			for k, v := range c.Case {
				switch k {
				case "name":
				case "messages":
					var msgs []map[string]json.RawMessage
					if err := json.Unmarshal(v, &msgs); err != nil {
						t.Fatal(err)
					}
					list := make([]any, len(msgs))
					for i, m := range msgs {
						mm := map[string]any{}
						for mk, mv := range m {
							mm[mk] = mv
						}
						list[i] = mm
					}
					vars[k] = list
				default:
					vars[k] = v
				}
			}
			got, err := tpl.Render(vars)
			if c.Error != nil {
				if err == nil || !strings.Contains(err.Error(), *c.Error) {
					t.Fatalf("want error %q, got %v (output %q)", *c.Error, err, got)
				}
				if !errors.Is(err, ErrRender) {
					t.Errorf("error %v is not ErrRender", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != *c.Text {
				t.Errorf("mismatch\n got %q\nwant %q", got, *c.Text)
			}
		})
	}
}

func TestToJSON(t *testing.T) {
	tpl, err := Compile(`{{ x | tojson }}|{{ x | tojson(indent=1) }}|{{ x | tojson(sort_keys=true) }}|{{ x | tojson(ensure_ascii=true) }}`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tpl.Render(map[string]any{"x": json.RawMessage(`{"z": [1, 2.50, "é😀\u2028<&>"], "a": {}, "n": null, "big": 1e300, "neg": -0.0001}`)})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"z": [1, 2.5, "é😀` + "\u2028" + `<&>"], "a": {}, "n": null, "big": 1e+300, "neg": -0.0001}` +
		"|{\n \"z\": [\n  1,\n  2.5,\n  \"é😀\u2028<&>\"\n ],\n \"a\": {},\n \"n\": null,\n \"big\": 1e+300,\n \"neg\": -0.0001\n}" +
		`|{"a": {}, "big": 1e+300, "n": null, "neg": -0.0001, "z": [1, 2.5, "é😀` + "\u2028" + `<&>"]}` +
		`|{"z": [1, 2.5, "\u00e9\ud83d\ude00\u2028<&>"], "a": {}, "n": null, "big": 1e+300, "neg": -0.0001}`
	if got != want {
		t.Errorf("\n got %q\nwant %q", got, want)
	}
}

func TestPyFloatRepr(t *testing.T) {
	for f, want := range map[float64]string{
		1: "1.0", 0.1: "0.1", 1e16: "1e+16", 1e15: "1000000000000000.0", 1e-4: "0.0001", 1e-5: "1e-05",
		123456789.125: "123456789.125", -2.5e-7: "-2.5e-07", math.Inf(1): "Infinity", 1.5e300: "1.5e+300",
	} {
		if got := PyFloatRepr(f, true); got != want {
			t.Errorf("%v: got %q want %q", f, got, want)
		}
	}
}

func TestStrftimeNow(t *testing.T) {
	tpl, err := Compile(`{{ strftime_now("%d %b %Y %H:%M %A %j %%") }}`)
	if err != nil {
		t.Fatal(err)
	}
	tpl.Now = func() time.Time { return time.Date(2024, 7, 5, 9, 3, 0, 0, time.UTC) }
	got, err := tpl.Render(nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := "05 Jul 2024 09:03 Friday 187 %"; got != want {
		t.Errorf("got %q want %q", got, want)
	}
}

func TestErrors(t *testing.T) {
	if _, err := Compile("{% for x in %}"); !errors.Is(err, ErrTemplate) {
		t.Errorf("syntax error: %v", err)
	}
	tpl, err := Compile("{{ raise_exception('nope: ' + x) }}")
	if err != nil {
		t.Fatal(err)
	}
	_, err = tpl.Render(map[string]any{"x": "y"})
	var re *RaiseError
	if !errors.Is(err, ErrRender) || !strings.Contains(err.Error(), "nope: y") || !errors.As(err, &re) || re.Message != "nope: y" {
		t.Errorf("raise_exception: %v", err)
	}
	if _, err := tpl.Render(map[string]any{"x": json.RawMessage(`{"a":`)}); !errors.Is(err, ErrRender) {
		t.Errorf("bad json: %v", err)
	}
}

// FuzzCompile: arbitrary template text never panics.
func FuzzCompile(f *testing.F) {
	f.Add("{% for m in messages %}{{ m.content | tojson }}{% endfor %}")
	f.Add("{{ x[::-1] }}{% if %}")
	f.Fuzz(func(t *testing.T, src string) {
		tpl, err := Compile(src)
		if err != nil {
			return
		}
		_, _ = tpl.Render(map[string]any{"messages": []map[string]any{{"role": "user", "content": "hi"}}, "x": "abc"})
	})
}
