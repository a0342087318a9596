// Command plotresults turns loadgen JSON reports into PNG plots:
// throughput vs concurrency, TTFT and end-to-end latency percentiles vs
// concurrency, and memory (weights, KV cache capacity, KV cache in use per
// level). Several reports are overlaid to compare runs.
package main

import (
	"errors"
	"flag"
	"fmt"
	"image"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/llmserve/llmserve/bench"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "plotresults:", err)
		}
		os.Exit(1)
	}
}

// Plot file names (the reference's, with memory for its vram_usage).
const (
	fileThroughput = "throughput_vs_concurrency.png"
	fileLatency    = "latency_vs_concurrency.png"
	fileMemory     = "memory_usage.png"
)

type series struct {
	label string
	r     *bench.Report
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("plotresults", flag.ContinueOnError)
	fs.SetOutput(stderr)
	results := fs.String("results", "results/benchmark_results.json", "comma-separated loadgen JSON reports to overlay")
	labels := fs.String("labels", "", "comma-separated legend labels (default: file names)")
	outDir := fs.String("output-dir", "plots", "directory for the PNGs")
	width := fs.Int("width", 1200, "image width in pixels")
	height := fs.Int("height", 600, "image height in pixels")
	dpi := fs.Int("dpi", 96, "resolution (text scales with it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *width < 100 || *height < 100 || *dpi < 10 {
		return errors.New("--width and --height must be >= 100 pixels, --dpi >= 10")
	}
	files := splitList(*results)
	if len(files) == 0 {
		return errors.New("no --results")
	}
	names := splitList(*labels)
	if len(names) != 0 && len(names) != len(files) {
		return fmt.Errorf("%d labels for %d result files", len(names), len(files))
	}
	var runs []series
	for i, f := range files {
		r, err := bench.ReadReport(f)
		if err != nil {
			return err
		}
		label := strings.TrimSuffix(filepath.Base(f), filepath.Ext(f))
		if len(names) > 0 {
			label = names[i]
		}
		runs = append(runs, series{label, r})
	}
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		return err
	}
	sz := size{*width, *height, *dpi}
	for _, p := range []struct {
		file string
		make func([]series) ([]*plot.Plot, error)
	}{
		{fileThroughput, throughputPlots},
		{fileLatency, latencyPlots},
		{fileMemory, memoryPlots},
	} {
		plots, err := p.make(runs)
		if err != nil {
			return fmt.Errorf("%s: %w", p.file, err)
		}
		path := filepath.Join(*outDir, p.file)
		if err := savePNG(path, plots, sz); err != nil {
			return fmt.Errorf("%s: %w", p.file, err)
		}
		fmt.Fprintln(stdout, path)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

type size struct{ w, h, dpi int }

// savePNG draws plots side by side on one image of exactly sz pixels.
func savePNG(path string, plots []*plot.Plot, sz size) error {
	img := image.NewRGBA(image.Rect(0, 0, sz.w, sz.h))
	c := vgimg.NewWith(vgimg.UseImage(img), vgimg.UseDPI(sz.dpi))
	dc := draw.New(c)
	tiles := draw.Tiles{Rows: 1, Cols: len(plots), PadX: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align([][]*plot.Plot{plots}, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[0][i])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: c}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// xAxis names the sweep's variable; every run must share it.
func xAxis(runs []series) (name string, openLoop bool, err error) {
	open := float64(runs[0].r.Levels[0].RequestRate) > 0
	for _, r := range runs {
		if (float64(r.r.Levels[0].RequestRate) > 0) != open {
			return "", false, errors.New("cannot overlay closed-loop (concurrency) and open-loop (rate) sweeps")
		}
	}
	if open {
		return "Request rate (req/s)", true, nil
	}
	return "Concurrency (requests in flight)", false, nil
}

// points returns (x, y) for each finite x, sorted by x.
func points(levels []bench.LevelResult, y func(bench.LevelResult) float64) plotter.XYs {
	var xys plotter.XYs
	for _, l := range levels {
		x, v := l.X(), y(l)
		if math.IsInf(x, 0) || math.IsNaN(v) || x <= 0 {
			continue // an "inf" rate has no place on the axis
		}
		xys = append(xys, plotter.XY{X: x, Y: v})
	}
	slices.SortFunc(xys, func(a, b plotter.XY) int { return int(math.Copysign(1, a.X-b.X)) })
	return xys
}

// newPlot makes a plot with the sweep's x axis on a log2 scale with a tick
// at every level run.
func newPlot(runs []series, title, ylabel string) (*plot.Plot, error) {
	name, _, err := xAxis(runs)
	if err != nil {
		return nil, err
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = name
	p.Y.Label.Text = ylabel
	p.Legend.Top = true
	p.Legend.Left = true
	var xs []float64
	for _, r := range runs {
		for _, l := range r.r.Levels {
			if x := l.X(); x > 0 && !math.IsInf(x, 0) {
				xs = append(xs, x)
			}
		}
	}
	slices.Sort(xs)
	xs = slices.Compact(xs)
	if len(xs) > 1 && xs[len(xs)-1]/xs[0] >= 8 {
		p.X.Scale = plot.LogScale{}
		var ticks plot.ConstantTicks
		for _, x := range xs {
			ticks = append(ticks, plot.Tick{Value: x, Label: strconv.FormatFloat(x, 'g', 4, 64)})
		}
		p.X.Tick.Marker = ticks
		p.X.Min, p.X.Max = xs[0]/1.15, xs[len(xs)-1]*1.15
	}
	p.Add(plotter.NewGrid())
	return p, nil
}

func addLine(p *plot.Plot, xys plotter.XYs, label string, c color.Color, dashes []vg.Length, glyph int) error {
	if len(xys) == 0 {
		return nil
	}
	l, s, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	l.Color, l.Width, l.Dashes = c, vg.Points(1.5), dashes
	s.Color, s.Shape = c, plotutil.Shape(glyph)
	p.Add(l, s)
	p.Legend.Add(label, l, s)
	return nil
}

// headroom starts the y axis at 0 and raises its top so that a legend of
// n entries in the top-left corner clears the data.
func headroom(p *plot.Plot, n int) {
	p.Y.Min = 0
	p.Y.Max *= 1 + 0.07*float64(n)
}

func throughputPlots(runs []series) ([]*plot.Plot, error) {
	out, err := newPlot(runs, "Output token throughput", "Output tokens/s")
	if err != nil {
		return nil, err
	}
	req, err := newPlot(runs, "Request throughput", "Requests/s")
	if err != nil {
		return nil, err
	}
	for i, r := range runs {
		c := plotutil.Color(i)
		levels := r.r.Levels
		if err := addLine(out, points(levels, func(l bench.LevelResult) float64 { return l.OutputThroughput }), r.label, c, nil, i); err != nil {
			return nil, err
		}
		if err := addLine(req, points(levels, func(l bench.LevelResult) float64 { return l.RequestThroughput }), r.label, c, nil, i); err != nil {
			return nil, err
		}
		// Ring the saturation point, where throughput stops growing while
		// p99 TTFT jumps.
		if sat, _ := bench.Saturation(levels); sat > 0 && float64(levels[sat].RequestRate) == 0 {
			s, err := plotter.NewScatter(plotter.XYs{{X: levels[sat].X(), Y: levels[sat].OutputThroughput}})
			if err != nil {
				return nil, err
			}
			s.Shape, s.Color, s.Radius = ringGlyph{}, color.RGBA{R: 220, A: 255}, vg.Points(7)
			out.Add(s)
			out.Legend.Add(r.label+" saturation", s)
		}
	}
	headroom(out, 2*len(runs))
	headroom(req, len(runs))
	return []*plot.Plot{out, req}, nil
}

// ringGlyph is an unfilled circle.
type ringGlyph struct{}

func (ringGlyph) DrawGlyph(c *draw.Canvas, sty draw.GlyphStyle, pt vg.Point) {
	c.SetLineStyle(draw.LineStyle{Color: sty.Color, Width: vg.Points(2)})
	var p vg.Path
	p.Move(vg.Point{X: pt.X + sty.Radius, Y: pt.Y})
	p.Arc(pt, sty.Radius, 0, 2*math.Pi)
	p.Close()
	c.Stroke(p)
}

var percentileDashes = [][]vg.Length{nil, {vg.Points(6), vg.Points(3)}, {vg.Points(2), vg.Points(2)}}

func latencyPlots(runs []series) ([]*plot.Plot, error) {
	ttft, err := newPlot(runs, "Time to first token", "TTFT (ms)")
	if err != nil {
		return nil, err
	}
	e2e, err := newPlot(runs, "End-to-end latency", "E2E latency (ms)")
	if err != nil {
		return nil, err
	}
	for i, r := range runs {
		c := plotutil.Color(i)
		for k, q := range []struct {
			name string
			get  func(bench.Summary) float64
		}{{"p50", func(s bench.Summary) float64 { return s.P50 }},
			{"p95", func(s bench.Summary) float64 { return s.P95 }},
			{"p99", func(s bench.Summary) float64 { return s.P99 }}} {
			label := q.name
			if len(runs) > 1 {
				label = r.label + " " + q.name
			}
			tx := points(r.r.Levels, func(l bench.LevelResult) float64 {
				if l.TTFTms.Count == 0 {
					return math.NaN()
				}
				return q.get(l.TTFTms)
			})
			ex := points(r.r.Levels, func(l bench.LevelResult) float64 {
				if l.E2Ems.Count == 0 {
					return math.NaN()
				}
				return q.get(l.E2Ems)
			})
			if err := addLine(ttft, tx, label, c, percentileDashes[k], i); err != nil {
				return nil, err
			}
			if err := addLine(e2e, ex, label, c, percentileDashes[k], i); err != nil {
				return nil, err
			}
		}
	}
	headroom(ttft, 3*len(runs))
	headroom(e2e, 3*len(runs))
	return []*plot.Plot{ttft, e2e}, nil
}

const gib = 1 << 30

// memoryPlots draws the static memory (weights, KV cache) as bars in GiB
// and the KV cache in use per level, in tokens against the capacity when
// the server reported one, else as a percentage.
func memoryPlots(runs []series) ([]*plot.Plot, error) {
	static := plot.New()
	static.Title.Text = "Server memory"
	static.Y.Label.Text = "GiB"
	static.Legend.Top = true
	var cats []string
	haveKVBytes := false
	for _, r := range runs {
		haveKVBytes = haveKVBytes || r.r.Environment.KVCacheBytes != nil
	}
	cats = append(cats, "model weights")
	if haveKVBytes {
		cats = append(cats, "KV cache")
	}
	barW := vg.Points(80) / vg.Length(len(runs))
	reported := false
	for i, r := range runs {
		e := r.r.Environment
		vals := plotter.Values{gibOr0(e.WeightsBytes)}
		if haveKVBytes {
			vals = append(vals, gibOr0(e.KVCacheBytes))
		}
		reported = reported || e.WeightsBytes != nil || e.KVCacheBytes != nil
		b, err := plotter.NewBarChart(vals, barW)
		if err != nil {
			return nil, err
		}
		b.Color = plotutil.Color(i)
		b.Offset = vg.Length(i-len(runs)/2)*barW + func() vg.Length {
			if len(runs)%2 == 0 {
				return barW / 2
			}
			return 0
		}()
		static.Add(b)
		static.Legend.Add(r.label, b)
	}
	static.NominalX(cats...)
	static.Y.Min = 0
	switch {
	case !reported:
		static.Title.Text = "Server memory (not reported by /health)"
	case len(runs) == 1:
		e := runs[0].r.Environment
		static.Title.Text = fmt.Sprintf("Server memory: weights %.2f GiB", gibOr0(e.WeightsBytes))
		if e.KVCacheCapacityTokens != nil {
			static.Title.Text += fmt.Sprintf(", KV capacity %.0f tokens", *e.KVCacheCapacityTokens)
		}
	}

	tokens := true
	for _, r := range runs {
		tokens = tokens && r.r.Environment.KVCacheCapacityTokens != nil
	}
	ylabel := "KV cache in use (% of capacity)"
	if tokens {
		ylabel = "KV cache (tokens)"
	}
	kv, err := newPlot(runs, "KV cache in use per level (sampled from /metrics)", ylabel)
	if err != nil {
		return nil, err
	}
	kv.Y.Min = 0
	for i, r := range runs {
		c := plotutil.Color(i)
		scale := 100.0
		if tokens {
			scale = *r.r.Environment.KVCacheCapacityTokens
		}
		get := func(f func(*bench.ServerStats) float64) func(bench.LevelResult) float64 {
			return func(l bench.LevelResult) float64 {
				if l.Server == nil {
					return math.NaN()
				}
				return f(l.Server) * scale
			}
		}
		prefix := ""
		if len(runs) > 1 {
			prefix = r.label + " "
		}
		if err := addLine(kv, points(r.r.Levels, get(func(s *bench.ServerStats) float64 { return s.KVCacheUsageMax })),
			prefix+"in use (max)", c, nil, i); err != nil {
			return nil, err
		}
		if err := addLine(kv, points(r.r.Levels, get(func(s *bench.ServerStats) float64 { return s.KVCacheUsageMean })),
			prefix+"in use (mean)", c, percentileDashes[1], i); err != nil {
			return nil, err
		}
		if tokens {
			fn := plotter.NewFunction(func(float64) float64 { return scale })
			fn.Color, fn.Dashes, fn.Width = c, percentileDashes[2], vg.Points(1.5)
			kv.Add(fn)
			kv.Legend.Add(prefix+"capacity", fn)
			kv.Y.Max = max(kv.Y.Max, scale*1.05)
		}
	}
	if !tokens {
		kv.Y.Max = 100
	}
	headroom(kv, 3*len(runs))
	return []*plot.Plot{static, kv}, nil
}

func gibOr0(v *float64) float64 {
	if v == nil {
		return 0
	}
	return *v / gib
}
