package weights

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/internal/shareddata"

	"github.com/llmserve/llmserve/ml"
)

func TestOpenTestdata(t *testing.T) {
	td := shareddata.Dir(t)
	cases := []struct {
		model  string
		dtype  ml.DType
		embed  []int
		tensor string
	}{
		{"qwen2-tiny", ml.F32, []int{512, 64}, "model.layers.0.self_attn.q_proj.bias"},
		{"llama3-tiny-bf16", ml.BF16, []int{512, 96}, "lm_head.weight"},
	}
	for _, c := range cases {
		t.Run(c.model, func(t *testing.T) {
			dir := filepath.Join(td, "models", c.model)
			src, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			names := src.Names()
			if len(names) == 0 {
				t.Fatal("no tensors")
			}
			st, _ := os.Stat(filepath.Join(dir, SingleFile))
			total := 0
			for _, n := range names {
				tn, err := src.Tensor(n)
				if err != nil {
					t.Fatal(err)
				}
				if tn.DType != c.dtype {
					t.Errorf("%s: dtype %v, want %v", n, tn.DType, c.dtype)
				}
				if len(tn.Data) != tn.Elems()*tn.DType.Size() {
					t.Errorf("%s: %d bytes for shape %v", n, len(tn.Data), tn.Shape)
				}
				total += len(tn.Data)
			}
			// Tensors tile the data section exactly in HF-written files.
			f, _ := os.ReadFile(filepath.Join(dir, SingleFile))
			hl := int(binary.LittleEndian.Uint64(f))
			if int64(total) != st.Size()-8-int64(hl) {
				t.Errorf("tensors hold %d bytes, data section is %d", total, st.Size()-8-int64(hl))
			}
			emb, err := src.Tensor("model.embed_tokens.weight")
			if err != nil {
				t.Fatal(err)
			}
			if !equalInts(emb.Shape, c.embed) {
				t.Errorf("embed shape %v, want %v", emb.Shape, c.embed)
			}
			if _, err := src.Tensor(c.tensor); err != nil {
				t.Error(err)
			}
			// Values are finite and not all zero.
			vals := emb.ToF32()
			var sum float64
			for _, v := range vals {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					t.Fatalf("non-finite value %v", v)
				}
				sum += math.Abs(float64(v))
			}
			if sum == 0 {
				t.Error("embedding is all zero")
			}
			_, err = src.Tensor("model.nope.weight")
			if !errors.Is(err, ErrMissingTensor) || !strings.Contains(err.Error(), "model.nope.weight") {
				t.Errorf("missing tensor error = %v", err)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// mk makes a tensor of random F32/F16/BF16 data.
func mk(name string, dt ml.DType, shape ...int) *Tensor {
	return &Tensor{Name: name, DType: dt, Shape: shape, Data: Random(dt, shape, 1, name, 1)}
}

func writeShards(t *testing.T, dir string, shards [][]*Tensor) map[string]string {
	t.Helper()
	wm := map[string]string{}
	for i, ts := range shards {
		fn := filepathShard(i+1, len(shards))
		if err := WriteFile(filepath.Join(dir, fn), ts, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
		for _, x := range ts {
			wm[x.Name] = fn
		}
	}
	writeIndex(t, dir, wm)
	return wm
}

func filepathShard(i, n int) string {
	return "model-0000" + string(rune('0'+i)) + "-of-0000" + string(rune('0'+n)) + ".safetensors"
}

func writeIndex(t *testing.T, dir string, wm map[string]string) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": wm})
	if err := os.WriteFile(filepath.Join(dir, IndexFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSharded(t *testing.T) {
	dir := t.TempDir()
	shards := [][]*Tensor{
		{mk("a.weight", ml.BF16, 8, 16), mk("b.weight", ml.F32, 16)},
		{mk("c.weight", ml.F16, 3, 5, 7)},
		{mk("d.weight", ml.F32, 0, 4), mk("e.bias", ml.BF16, 33)},
	}
	writeShards(t, dir, shards)
	src, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	want := []string{"a.weight", "b.weight", "c.weight", "d.weight", "e.bias"}
	if got := src.Names(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("names %v, want %v", got, want)
	}
	for _, sh := range shards {
		for _, w := range sh {
			g, err := src.Tensor(w.Name)
			if err != nil {
				t.Fatal(err)
			}
			if g.DType != w.DType || !equalInts(g.Shape, w.Shape) || !bytes.Equal(g.Data, w.Data) {
				t.Errorf("%s: got %v %v %d bytes, want %v %v %d bytes", w.Name, g.DType, g.Shape, len(g.Data), w.DType, w.Shape, len(w.Data))
			}
		}
	}
}

func TestShardedErrors(t *testing.T) {
	shards := [][]*Tensor{{mk("a", ml.F32, 4)}, {mk("b", ml.F32, 4)}}
	cases := []struct {
		name   string
		edit   func(t *testing.T, dir string, wm map[string]string)
		target error
	}{
		{"index names absent tensor", func(t *testing.T, dir string, wm map[string]string) {
			wm["zzz"] = wm["a"]
			writeIndex(t, dir, wm)
		}, ErrCorrupt},
		{"index points at wrong shard", func(t *testing.T, dir string, wm map[string]string) {
			wm["a"] = wm["b"]
			writeIndex(t, dir, wm)
		}, ErrCorrupt},
		{"non-local shard path", func(t *testing.T, dir string, wm map[string]string) {
			wm["a"] = "../x.safetensors"
			writeIndex(t, dir, wm)
		}, ErrCorrupt},
		{"missing shard file", func(t *testing.T, dir string, wm map[string]string) {
			os.Remove(filepath.Join(dir, wm["b"]))
		}, fs.ErrNotExist},
		{"bad index json", func(t *testing.T, dir string, wm map[string]string) {
			os.WriteFile(filepath.Join(dir, IndexFile), []byte("{"), 0o644)
		}, ErrCorrupt},
		{"truncated shard", func(t *testing.T, dir string, wm map[string]string) {
			p := filepath.Join(dir, wm["b"])
			st, _ := os.Stat(p)
			os.Truncate(p, st.Size()-1)
		}, ErrCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			wm := writeShards(t, dir, shards)
			c.edit(t, dir, wm)
			src, err := Open(dir)
			if err == nil {
				src.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, c.target) {
				t.Errorf("error %v, want %v", err, c.target)
			}
		})
	}
}

func TestOpenFallbacks(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("empty dir: %v", err)
	}
	if _, err := Open(filepath.Join(dir, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing dir: %v", err)
	}
	// Unindexed multi-file directories load every *.safetensors file.
	if err := WriteFile(filepath.Join(dir, "x.safetensors"), []*Tensor{mk("x", ml.F32, 2)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(filepath.Join(dir, "y.safetensors"), []*Tensor{mk("y", ml.F32, 2)}, nil); err != nil {
		t.Fatal(err)
	}
	src, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(src.Names(), ","); got != "x,y" {
		t.Errorf("names %s", got)
	}
	src.Close()
	// A single file path works too.
	src, err = Open(filepath.Join(dir, "x.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	src.Close()
	// Duplicate names across unindexed files are corrupt.
	if err := WriteFile(filepath.Join(dir, "z.safetensors"), []*Tensor{mk("x", ml.F32, 2)}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); !errors.Is(err, ErrCorrupt) {
		t.Errorf("duplicate tensor: %v", err)
	}
}

// rawFile builds a safetensors file from a literal header and data length.
func rawFile(hdr string, data int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	b = append(b, hdr...)
	return append(b, make([]byte, data)...)
}

func TestParseHeaderErrors(t *testing.T) {
	huge := binary.LittleEndian.AppendUint64(nil, 1<<62)
	cases := []struct {
		name   string
		file   []byte
		target error
		msg    string
	}{
		{"empty", nil, ErrCorrupt, "shorter than"},
		{"short", []byte{1, 2, 3}, ErrCorrupt, "shorter than"},
		{"huge header length", append(huge, "{}"...), ErrCorrupt, "exceeds"},
		{"header past end", append(binary.LittleEndian.AppendUint64(nil, 100), "{}"...), ErrCorrupt, "truncated"},
		{"not json", rawFile("hello", 0), ErrCorrupt, "JSON"},
		{"json array", rawFile("[1]", 0), ErrCorrupt, "JSON object"},
		{"bad json", rawFile(`{"a":`, 0), ErrCorrupt, "JSON"},
		{"entry not object", rawFile(`{"a":5}`, 0), ErrCorrupt, `"a"`},
		{"offsets missing", rawFile(`{"a":{"dtype":"F32","shape":[1]}}`, 4), ErrCorrupt, "data_offsets"},
		{"offsets negative", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}`, 4), ErrCorrupt, "data_offsets"},
		{"offsets three", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, 8), ErrCorrupt, "data_offsets"},
		{"offsets reversed", rawFile(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}`, 4), ErrCorrupt, "reversed"},
		{"out of range", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 4), ErrCorrupt, "beyond"},
		{"size mismatch", rawFile(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, 8), ErrCorrupt, "needs 12 bytes"},
		{"negative dim", rawFile(`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}`, 0), ErrCorrupt, "dimension"},
		{"shape overflow", rawFile(`{"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,0]}}`, 0), ErrCorrupt, "overflow"},
		{"overlap", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, 12), ErrCorrupt, "overlap"},
		{"bad metadata", rawFile(`{"__metadata__":{"x":1}}`, 0), ErrCorrupt, "__metadata__"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseHeader(c.file)
			if !errors.Is(err, c.target) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %v, want %v containing %q", err, c.target, c.msg)
			}
		})
	}
}

func TestUnsupportedDType(t *testing.T) {
	dir := t.TempDir()
	f := rawFile(`{"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"w":{"dtype":"F32","shape":[1],"data_offsets":[16,20]},"q":{"dtype":"F4_WEIRD","shape":[7],"data_offsets":[20,21]}}`, 21)
	if err := os.WriteFile(filepath.Join(dir, SingleFile), f, 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for _, n := range []string{"ids", "q"} {
		_, err := src.Tensor(n)
		if !errors.Is(err, ErrUnsupportedDType) || !strings.Contains(err.Error(), n) {
			t.Errorf("%s: %v", n, err)
		}
	}
	if _, err := src.Tensor("w"); err != nil {
		t.Error(err)
	}
	// The I64 size is still validated.
	f = rawFile(`{"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,8]}}`, 8)
	if _, err := parseHeader(f); !errors.Is(err, ErrCorrupt) {
		t.Errorf("I64 size mismatch: %v", err)
	}
}

// Every truncation of a real checkpoint is an error, never a crash.
func TestTruncatedTestdata(t *testing.T) {
	td := shareddata.Dir(t)
	full, err := os.ReadFile(filepath.Join(td, "models", "qwen2-tiny", SingleFile))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, SingleFile)
	for _, n := range []int{0, 1, 7, 8, 9, 100, 1000, len(full) / 2, len(full) - 4, len(full) - 1} {
		if err := os.WriteFile(p, full[:n], 0o644); err != nil {
			t.Fatal(err)
		}
		src, err := Open(dir)
		if err == nil {
			src.Close()
			t.Fatalf("truncated to %d bytes: Open succeeded", n)
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("truncated to %d: %v", n, err)
		}
	}
	// Parse every prefix in memory (cheap, no files).
	for n := 0; n < len(full); n += 97 {
		if _, err := parseHeader(full[:n]); err == nil {
			t.Fatalf("prefix %d parsed", n)
		}
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add(rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 8))
	f.Add(rawFile(`{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[],"data_offsets":[8,10]}}`, 10))
	f.Add(rawFile(`{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}`, 8))
	f.Add([]byte{})
	td, _ := shareddata.Lookup()
	if b, err := os.ReadFile(filepath.Join(td, "models", "qwen2-tiny", SingleFile)); err == nil {
		if n := binary.LittleEndian.Uint64(b); n < uint64(len(b)-8) {
			f.Add(b[:8+n]) // header only: the data section is truncated
		}
	}
	f.Fuzz(func(t *testing.T, file []byte) {
		h, err := parseHeader(file)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error not ErrCorrupt: %v", err)
			}
			return
		}
		var prevEnd uint64
		for i := range h.entries {
			e := &h.entries[i]
			if h.dataStart+e.end > uint64(len(file)) || e.begin < prevEnd {
				t.Fatalf("accepted bad range %q [%d,%d)", e.name, e.begin, e.end)
			}
			prevEnd = e.end
			tn, err := tensorFrom(e, h, file)
			if err != nil {
				if !errors.Is(err, ErrUnsupportedDType) {
					t.Fatal(err)
				}
				continue
			}
			if len(tn.Data) != tn.Elems()*tn.DType.Size() {
				t.Fatalf("%q: %d bytes for %v", tn.Name, len(tn.Data), tn.Shape)
			}
			tn.ToF32()
		}
	})
}

func TestBF16(t *testing.T) {
	// Every bfloat16 round-trips through float32.
	for h := range 1 << 16 {
		f := BF16ToF32(uint16(h))
		if f != f {
			if g := BF16ToF32(F32ToBF16(f)); g == g {
				t.Fatalf("NaN %#x lost", h)
			}
			continue
		}
		if g := F32ToBF16(f); g != uint16(h) {
			t.Fatalf("%#x -> %v -> %#x", h, f, g)
		}
	}
	cases := []struct {
		in   uint32
		want uint16
	}{
		{0x3f808000, 0x3f80}, // tie, even stays
		{0x3f818000, 0x3f82}, // tie, odd rounds up
		{0x3f808001, 0x3f81}, // above tie
		{0x7f7fffff, 0x7f80}, // max float rounds to Inf
	}
	for _, c := range cases {
		if got := F32ToBF16(math.Float32frombits(c.in)); got != c.want {
			t.Errorf("F32ToBF16(%#x) = %#x, want %#x", c.in, got, c.want)
		}
	}
}

// nearestF16 is the float64 reference: the closest half by exhaustive
// comparison, ties to the even encoding.
func nearestF16(f float32, halves []float64) uint16 {
	x := float64(f)
	best, bestD := uint16(0), math.Inf(1)
	for h := range 0x7c01 { // 0..Inf, positive
		d := math.Abs(math.Abs(x) - halves[h])
		if h == 0x7c00 {
			// Inf is "nearest" beyond the rounding boundary 65520.
			if math.Abs(x) >= 65520 {
				best, bestD = 0x7c00, 0
			}
			continue
		}
		if d < bestD || (d == bestD && h&1 == 0) {
			best, bestD = uint16(h), d
		}
	}
	if math.Signbit(x) {
		best |= 0x8000
	}
	return best
}

func TestF16(t *testing.T) {
	for h := range 1 << 16 {
		f := F16ToF32(uint16(h))
		if f != f {
			if g := F16ToF32(F32ToF16(f)); g == g {
				t.Fatalf("NaN %#x lost", h)
			}
			continue
		}
		if g := F32ToF16(f); g != uint16(h) {
			t.Fatalf("%#x -> %v -> %#x", h, f, g)
		}
	}
	// Known values.
	for _, c := range []struct {
		h uint16
		f float32
	}{{0x3c00, 1}, {0xc000, -2}, {0x7bff, 65504}, {0x0001, 5.9604645e-08}, {0x0400, 6.1035156e-05}, {0x3555, 0.33325195}} {
		if got := F16ToF32(c.h); got != c.f {
			t.Errorf("F16ToF32(%#x) = %v, want %v", c.h, got, c.f)
		}
	}
	halves := make([]float64, 0x7c01)
	for h := range halves {
		halves[h] = float64(F16ToF32(uint16(h)))
	}
	// Rounding against the exhaustive reference: midpoints, neighbours of
	// midpoints, and pseudo-random floats across the half range.
	var probes []float32
	for h := 0; h < 0x7c00; h += 7 {
		mid := (halves[h] + halves[h+1]) / 2
		m := float32(mid)
		probes = append(probes, m, math.Nextafter32(m, 0), math.Nextafter32(m, 1e9), -m)
	}
	s := uint64(1)
	for range 3000 {
		var r uint64
		s, r = wyrand(s)
		probes = append(probes, math.Float32frombits(uint32(r)&0x7fffffff|0x30000000&uint32(r>>32)))
	}
	for _, p := range probes {
		if p != p {
			continue
		}
		if got, want := F32ToF16(p), nearestF16(p, halves); got != want {
			t.Fatalf("F32ToF16(%v = %#x) = %#x, want %#x", p, math.Float32bits(p), got, want)
		}
	}
}

func TestConvert(t *testing.T) {
	vals := []float32{0, 1, -1.5, 3.140625, 1e-3, -65504}
	for _, dt := range []ml.DType{ml.F32, ml.F16, ml.BF16} {
		buf := make([]byte, len(vals)*dt.Size())
		if n := ConvertFromF32(buf, vals, dt); n != len(vals) {
			t.Fatalf("%v: converted %d", dt, n)
		}
		out := make([]float32, len(vals)+3) // longer dst: only available elements converted
		if n := ConvertToF32(out, buf, dt); n != len(vals) {
			t.Fatalf("%v: decoded %d", dt, n)
		}
		for i, v := range vals {
			tol := map[ml.DType]float64{ml.F32: 0, ml.F16: 1e-3, ml.BF16: 8e-3}[dt]
			if math.Abs(float64(out[i]-v)) > tol*math.Abs(float64(v)) {
				t.Errorf("%v: %v -> %v", dt, v, out[i])
			}
		}
		// Short src: truncated, not a crash.
		if n := ConvertToF32(out, buf[:len(buf)-1], dt); n != len(vals)-1 {
			t.Errorf("%v: short src converted %d", dt, n)
		}
	}
	if n := ConvertToF32(make([]float32, 2), make([]byte, 8), ml.I8); n != 0 {
		t.Errorf("I8 converted %d", n)
	}
}

func TestRandom(t *testing.T) {
	shape := []int{300, 1000} // several chunks
	a := Random(ml.BF16, shape, 42, "w", 0.02)
	if len(a) != 300*1000*2 {
		t.Fatalf("len %d", len(a))
	}
	if !bytes.Equal(a, Random(ml.BF16, shape, 42, "w", 0.02)) {
		t.Error("not deterministic")
	}
	if bytes.Equal(a, Random(ml.BF16, shape, 43, "w", 0.02)) || bytes.Equal(a, Random(ml.BF16, shape, 42, "v", 0.02)) {
		t.Error("seed or name ignored")
	}
	// Independent of parallelism.
	prev := runtime.GOMAXPROCS(1)
	b := Random(ml.BF16, shape, 42, "w", 0.02)
	runtime.GOMAXPROCS(3)
	c := Random(ml.BF16, shape, 42, "w", 0.02)
	runtime.GOMAXPROCS(prev)
	if !bytes.Equal(a, b) || !bytes.Equal(a, c) {
		t.Error("depends on GOMAXPROCS")
	}
	for _, dt := range []ml.DType{ml.F32, ml.F16, ml.BF16} {
		vals := make([]float32, 300*1000)
		ConvertToF32(vals, Random(dt, shape, 7, "x", 0.5), dt)
		var sum, sq float64
		maxAbs := 0.0
		for _, v := range vals {
			sum += float64(v)
			sq += float64(v) * float64(v)
			maxAbs = math.Max(maxAbs, math.Abs(float64(v)))
		}
		n := float64(len(vals))
		mean, std := sum/n, math.Sqrt(sq/n-(sum/n)*(sum/n))
		// 3e5 samples: the standard error of the mean is 0.5/550 ≈ 1e-3.
		if math.Abs(mean) > 5e-3 || math.Abs(std-0.5) > 0.01 || maxAbs > 0.5*3.47 {
			t.Errorf("%v: mean %.4g std %.4g max %.3g", dt, mean, std, maxAbs)
		}
	}
	if Random(ml.I8, shape, 1, "x", 1) != nil || Random(ml.F32, []int{-1}, 1, "x", 1) != nil {
		t.Error("bad input not rejected")
	}
	if got := Random(ml.F32, []int{}, 1, "scalar", 1); len(got) != 4 {
		t.Errorf("scalar: %d bytes", len(got))
	}
}

func BenchmarkRandomBF16(b *testing.B) {
	shape := []int{4096, 4096}
	b.SetBytes(int64(shape[0] * shape[1] * 2))
	for b.Loop() {
		Random(ml.BF16, shape, 1, "w", 0.02)
	}
}

func BenchmarkConvertBF16ToF32(b *testing.B) {
	src := Random(ml.BF16, []int{1 << 20}, 1, "w", 1)
	dst := make([]float32, 1<<20)
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		ConvertToF32(dst, src, ml.BF16)
	}
}

// TestRelease: releasing a mapped tensor's pages keeps its bytes readable
// (they fault back from the file), and bytes outside the mappings (a heap
// copy) are left alone.
func TestRelease(t *testing.T) {
	dir := t.TempDir()
	big := make([]byte, 5*os.Getpagesize()+100)
	for i := range big {
		big[i] = byte(i*7 + 3)
	}
	ts := []*Tensor{{Name: "a", DType: ml.F32, Shape: []int{len(big) / 4}, Data: big[:len(big)/4*4]}}
	if err := WriteFile(filepath.Join(dir, SingleFile), ts, nil); err != nil {
		t.Fatal(err)
	}
	src, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	r, ok := src.(Releaser)
	if !ok {
		t.Fatal("a mapped source is not a Releaser")
	}
	x, err := src.Tensor("a")
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(x.Data)
	r.Release(x.Data)
	if !bytes.Equal(x.Data, want) {
		t.Fatal("a released tensor reads back different bytes")
	}
	heap := bytes.Clone(want)
	r.Release(heap)
	if !bytes.Equal(heap, want) {
		t.Fatal("Release changed memory outside the mappings")
	}
}
