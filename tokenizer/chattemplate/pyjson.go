package chattemplate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/nikolalohinski/gonja/v2/exec"
)

// ---------------------------------------------------------------- tojson

// filterToJSON is transformers' tojson: json.dumps(x, ensure_ascii=False,
// indent=None, separators=None, sort_keys=False).
func filterToJSON(_ *exec.Evaluator, in *exec.Value, params *exec.VarArgs) *exec.Value {
	if in.IsError() {
		return in
	}
	opts := dumpOpts{itemSep: ", ", keySep: ": "}
	ensureASCII := false
	var indent *exec.Value
	var separators *exec.Value
	for i, a := range params.Args {
		switch i {
		case 0:
			ensureASCII = a.IsTrue()
		case 1:
			indent = a
		case 2:
			separators = a
		case 3:
			opts.sortKeys = a.IsTrue()
		}
	}
	for k, v := range params.KwArgs {
		switch k {
		case "ensure_ascii":
			ensureASCII = v.IsTrue()
		case "indent":
			indent = v
		case "separators":
			separators = v
		case "sort_keys":
			opts.sortKeys = v.IsTrue()
		default:
			return exec.AsValue(fmt.Errorf("tojson: unexpected keyword argument %q", k))
		}
	}
	opts.ensureASCII = ensureASCII
	if indent != nil && !indent.IsNil() {
		switch {
		case indent.IsInteger():
			opts.indent = strings.Repeat(" ", max(indent.Integer(), 0))
		case indent.IsString():
			opts.indent = indent.String()
		default:
			return exec.AsValue(errors.New("tojson: indent must be an integer or a string"))
		}
		opts.hasIndent = true
		opts.itemSep = ","
	}
	if separators != nil && !separators.IsNil() {
		if !separators.IsList() || separators.Len() != 2 {
			return exec.AsValue(errors.New("tojson: separators must be a pair of strings"))
		}
		opts.itemSep, opts.keySep = separators.Index(0).String(), separators.Index(1).String()
	}
	var buf bytes.Buffer
	if err := dumpValue(&buf, in, &opts, 0); err != nil {
		return exec.AsValue(err)
	}
	return exec.AsSafeValue(buf.String())
}

type dumpOpts struct {
	itemSep, keySep string
	indent          string
	hasIndent       bool
	sortKeys        bool
	ensureASCII     bool
}

func (o *dumpOpts) newline(buf *bytes.Buffer, depth int) {
	if !o.hasIndent {
		return
	}
	buf.WriteByte('\n')
	for range depth {
		buf.WriteString(o.indent)
	}
}

const maxDumpDepth = 200

func dumpValue(buf *bytes.Buffer, v *exec.Value, o *dumpOpts, depth int) error {
	if depth > maxDumpDepth {
		return errors.New("tojson: nesting too deep")
	}
	if v == nil || v.IsNil() {
		buf.WriteString("null")
		return nil
	}
	switch {
	case v.IsError():
		return errors.New(v.Error())
	case v.IsBool():
		if v.Bool() {
			buf.WriteString("true")
		} else {
			buf.WriteString("false")
		}
		return nil
	case v.IsInteger():
		buf.WriteString(strconv.FormatInt(int64(v.Integer()), 10))
		return nil
	case v.IsFloat():
		buf.WriteString(PyFloatRepr(v.Float(), true))
		return nil
	case v.IsString():
		writePyString(buf, v.String(), o.ensureASCII)
		return nil
	case v.IsList():
		n := v.Len()
		if n == 0 {
			buf.WriteString("[]")
			return nil
		}
		buf.WriteByte('[')
		for i := 0; i < n; i++ {
			if i > 0 {
				buf.WriteString(o.itemSep)
			}
			o.newline(buf, depth+1)
			if err := dumpValue(buf, v.Index(i), o, depth+1); err != nil {
				return err
			}
		}
		o.newline(buf, depth)
		buf.WriteByte(']')
		return nil
	case v.IsDict():
		keys, vals := dictEntries(v)
		if len(keys) == 0 {
			buf.WriteString("{}")
			return nil
		}
		order := make([]int, len(keys))
		for i := range order {
			order[i] = i
		}
		if o.sortKeys {
			sort.SliceStable(order, func(a, b int) bool { return keys[order[a]] < keys[order[b]] })
		}
		buf.WriteByte('{')
		for i, k := range order {
			if i > 0 {
				buf.WriteString(o.itemSep)
			}
			o.newline(buf, depth+1)
			writePyString(buf, keys[k], o.ensureASCII)
			buf.WriteString(o.keySep)
			if err := dumpValue(buf, vals[k], o, depth+1); err != nil {
				return err
			}
		}
		o.newline(buf, depth)
		buf.WriteByte('}')
		return nil
	}
	return fmt.Errorf("tojson: object of type %s is not JSON serializable", v.Val.Type())
}

// dictKey renders a dict key as json.dumps does (keys become strings).
func dictKey(k *exec.Value) string {
	switch {
	case k == nil || k.IsNil():
		return "null"
	case k.IsBool():
		if k.Bool() {
			return "true"
		}
		return "false"
	case k.IsFloat():
		return PyFloatRepr(k.Float(), true)
	}
	return k.String()
}

// dictEntries lists a dict's keys and values: insertion order for ordered
// dicts, sorted keys for Go maps.
func dictEntries(v *exec.Value) ([]string, []*exec.Value) {
	rv := v.Val
	for rv.Kind() == reflect.Pointer || rv.Kind() == reflect.Interface {
		rv = rv.Elem()
	}
	if rv.Type() == exec.TypeDict {
		d := rv.Interface().(exec.Dict)
		keys := make([]string, len(d.Pairs))
		vals := make([]*exec.Value, len(d.Pairs))
		for i, p := range d.Pairs {
			keys[i], vals[i] = dictKey(p.Key), p.Value
		}
		return keys, vals
	}
	type kv struct {
		k string
		v *exec.Value
	}
	var items []kv
	iter := rv.MapRange()
	for iter.Next() {
		items = append(items, kv{dictKey(exec.ToValue(iter.Key())), exec.ToValue(iter.Value())})
	}
	sort.Slice(items, func(a, b int) bool { return items[a].k < items[b].k })
	keys := make([]string, len(items))
	vals := make([]*exec.Value, len(items))
	for i, it := range items {
		keys[i], vals[i] = it.k, it.v
	}
	return keys, vals
}

// writePyString writes s as Python's json.dumps does: only '"', '\\' and
// control characters are escaped (\n \r \t \b \f short forms, others \u00XX);
// with ensureASCII, non-ASCII as \uXXXX (surrogate pairs above U+FFFF).
func writePyString(buf *bytes.Buffer, s string, ensureASCII bool) {
	const hex = "0123456789abcdef"
	buf.WriteByte('"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch c {
			case '"':
				buf.WriteString(`\"`)
			case '\\':
				buf.WriteString(`\\`)
			case '\n':
				buf.WriteString(`\n`)
			case '\r':
				buf.WriteString(`\r`)
			case '\t':
				buf.WriteString(`\t`)
			case '\b':
				buf.WriteString(`\b`)
			case '\f':
				buf.WriteString(`\f`)
			default:
				if c < 0x20 {
					buf.WriteString(`\u00`)
					buf.WriteByte(hex[c>>4])
					buf.WriteByte(hex[c&15])
				} else {
					buf.WriteByte(c)
				}
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if ensureASCII {
			writeU := func(u rune) {
				buf.WriteString(`\u`)
				buf.WriteByte(hex[u>>12&15])
				buf.WriteByte(hex[u>>8&15])
				buf.WriteByte(hex[u>>4&15])
				buf.WriteByte(hex[u&15])
			}
			if r >= 0x10000 {
				r -= 0x10000
				writeU(0xD800 + r>>10)
				writeU(0xDC00 + r&0x3FF)
			} else {
				writeU(r)
			}
		} else {
			buf.WriteString(s[i : i+size])
		}
		i += size
	}
	buf.WriteByte('"')
}

// PyFloatRepr formats f as Python's repr(float) (json=true: Infinity/NaN as
// json.dumps writes them).
func PyFloatRepr(f float64, jsonStyle bool) string {
	switch {
	case math.IsInf(f, 1):
		if jsonStyle {
			return "Infinity"
		}
		return "inf"
	case math.IsInf(f, -1):
		if jsonStyle {
			return "-Infinity"
		}
		return "-inf"
	case math.IsNaN(f):
		if jsonStyle {
			return "NaN"
		}
		return "nan"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64)
	mant, expStr, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expStr)
	if exp >= -4 && exp < 16 {
		s := strconv.FormatFloat(f, 'f', -1, 64)
		if !strings.ContainsAny(s, ".") {
			s += ".0"
		}
		return s
	}
	sign := "+"
	if exp < 0 {
		sign, exp = "-", -exp
	}
	return fmt.Sprintf("%se%s%02d", mant, sign, exp)
}

// ------------------------------------------------------ ordered JSON values

// decodeOrdered decodes JSON keeping object key order (as *exec.Dict);
// numbers are int64 when integral literals, float64 otherwise, as Python's
// json.loads gives int and float.
func decodeOrdered(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	v, err := decodeOrderedValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after JSON value")
	}
	return v, nil
}

func decodeOrderedValue(dec *json.Decoder, depth int) (any, error) {
	if depth > 1000 {
		return nil, errors.New("JSON nested too deep")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			d := &exec.Dict{Pairs: []*exec.Pair{}}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, _ := kt.(string)
				v, err := decodeOrderedValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				// A repeated key keeps its first position, last value (dict).
				replaced := false
				for _, p := range d.Pairs {
					if p.Key.String() == k {
						p.Value = exec.AsValue(v)
						replaced = true
						break
					}
				}
				if !replaced {
					d.Pairs = append(d.Pairs, &exec.Pair{Key: exec.AsValue(k), Value: exec.AsValue(v)})
				}
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return d, nil
		case '[':
			list := []any{}
			for dec.More() {
				v, err := decodeOrderedValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				list = append(list, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return list, nil
		}
		return nil, fmt.Errorf("unexpected %v", t)
	case json.Number:
		return numberValue(t)
	}
	return tok, nil // string, bool, nil
}

func numberValue(n json.Number) (any, error) {
	s := n.String()
	if !strings.ContainsAny(s, ".eE") {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return int(i), nil
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return nil, err
	}
	return f, nil
}

// ------------------------------------------------------------ dict methods

// orderedDictMethods replaces keys/values/items/get with versions that keep
// an ordered dict's insertion order (gonja's sort the keys); the other dict
// methods are gonja's.
func orderedDictMethods(base *exec.MethodSet[map[string]any]) *exec.MethodSet[map[string]any] {
	methods := map[string]exec.Method[map[string]any]{}
	for _, name := range []string{"pop", "setdefault", "update", "copy", "clear"} {
		if m, ok := base.Get(name); ok {
			methods[name] = m
		}
	}
	noArgs := func(name string, a *exec.VarArgs) error {
		if len(a.Args) > 0 || len(a.KwArgs) > 0 {
			return exec.ErrInvalidCall(fmt.Errorf("%s() takes no arguments", name))
		}
		return nil
	}
	methods["keys"] = func(_ map[string]any, self *exec.Value, a *exec.VarArgs) (any, error) {
		if err := noArgs("keys", a); err != nil {
			return nil, err
		}
		ks, _ := rawDictEntries(self)
		return ks, nil
	}
	methods["values"] = func(_ map[string]any, self *exec.Value, a *exec.VarArgs) (any, error) {
		if err := noArgs("values", a); err != nil {
			return nil, err
		}
		_, vs := rawDictEntries(self)
		return vs, nil
	}
	methods["items"] = func(_ map[string]any, self *exec.Value, a *exec.VarArgs) (any, error) {
		if err := noArgs("items", a); err != nil {
			return nil, err
		}
		ks, vs := rawDictEntries(self)
		out := make([]any, len(ks))
		for i := range ks {
			out[i] = []any{ks[i], vs[i]}
		}
		return out, nil
	}
	methods["get"] = func(_ map[string]any, self *exec.Value, a *exec.VarArgs) (any, error) {
		if len(a.Args) < 1 || len(a.Args) > 2 {
			return nil, exec.ErrInvalidCall(errors.New("get() takes 1 or 2 positional arguments"))
		}
		if v, ok := self.GetItem(a.Args[0].Interface()); ok {
			return v.Interface(), nil
		}
		if len(a.Args) == 2 {
			return a.Args[1].Interface(), nil
		}
		return nil, nil
	}
	return exec.NewMethodSet(methods)
}

// rawDictEntries returns keys and values as Go values, in dict order.
func rawDictEntries(v *exec.Value) ([]any, []any) {
	rv := v.Val
	for rv.Kind() == reflect.Pointer || rv.Kind() == reflect.Interface {
		rv = rv.Elem()
	}
	if rv.Type() == exec.TypeDict {
		d := rv.Interface().(exec.Dict)
		ks := make([]any, len(d.Pairs))
		vs := make([]any, len(d.Pairs))
		for i, p := range d.Pairs {
			ks[i], vs[i] = p.Key.Interface(), p.Value.Interface()
		}
		return ks, vs
	}
	keys := v.Keys()
	sort.SliceStable(keys, func(a, b int) bool { return keys[a].String() < keys[b].String() })
	ks := make([]any, len(keys))
	vs := make([]any, len(keys))
	for i, k := range keys {
		ks[i] = k.Interface()
		if val, ok := v.GetItem(k.Interface()); ok {
			vs[i] = val.Interface()
		}
	}
	return ks, vs
}

// strMethods is gonja's string methods with replace fixed: Python's count
// argument is optional (gonja requires it).
func strMethods(base *exec.MethodSet[string]) *exec.MethodSet[string] {
	methods := map[string]exec.Method[string]{}
	for _, name := range []string{"capitalize", "capwords", "casefold", "center", "count", "encode", "endswith",
		"expandtabs", "find", "format", "format_map", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit",
		"islower", "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip",
		"partition", "removeprefix", "removesuffix", "rfind", "rjust", "rpartition", "rsplit", "rstrip", "split",
		"splitlines", "startswith", "strip", "swapcase", "title", "upper", "zfill"} {
		if m, ok := base.Get(name); ok {
			methods[name] = m
		}
	}
	methods["replace"] = func(self string, _ *exec.Value, a *exec.VarArgs) (any, error) {
		if len(a.Args) < 2 || len(a.Args) > 3 || !a.Args[0].IsString() || !a.Args[1].IsString() {
			return nil, exec.ErrInvalidCall(errors.New("replace() takes 2 or 3 arguments (old, new[, count])"))
		}
		n := -1
		if len(a.Args) == 3 {
			if !a.Args[2].IsInteger() {
				return nil, exec.ErrInvalidCall(errors.New("replace() count must be an integer"))
			}
			n = a.Args[2].Integer()
		}
		return strings.Replace(self, a.Args[0].String(), a.Args[1].String(), n), nil
	}
	return exec.NewMethodSet(methods)
}
