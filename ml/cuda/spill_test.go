package cuda

import (
	"fmt"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unsafe"
)

// stepSpillBound is the most bytes of spill stores, and twice that of spill
// loads, a decode-step kernel may have. The kernel runs every GEMV phase of
// a one-token step with 128 registers a thread (two 256-thread blocks an
// SM); a spill inside a phase's weight loop costs every step. The bound
// sits far above today's kernels and far below the regression it guards
// against: calling the MoE MLP as a function, in the dense kernel too,
// spilled 8 KB, most of it in the GEMV loops, and cost a third of the
// one-token decode rate.
const stepSpillBound = 1024

// TestStepKernelSpills compiles the decode-step kernels for sm_90 (head
// dim 128) with NVRTC alone, no GPU needed, and checks ptxas's report of
// their spills. It skips without NVRTC, unless LLMSERVE_REQUIRE_NVRTC is
// set (CI installs one).
func TestStepKernelSpills(t *testing.T) {
	l, require := nvrtcForTest(t)
	const epl = 4
	type result struct {
		log   string
		err   error
		entry string
	}
	results := make([]result, len(stepVariants))
	var wg sync.WaitGroup
	for i, v := range stepVariants {
		wg.Go(func() {
			log, err := compileUnitReport(l, stepUnit(epl, v))
			results[i] = result{log, err, stepKernelName(epl, v)}
		})
	}
	wg.Wait()
	for _, r := range results {
		if r.err != nil {
			t.Fatalf("%s: %v", r.entry, r.err)
		}
		stores, loads, ok := entrySpills(r.log, r.entry)
		if !ok {
			if !require && regexp.MustCompile(`ptxas`).FindString(r.log) == "" {
				t.Skipf("the NVRTC at %s prints no ptxas report (an emulator?)", l.nvrtcPath)
			}
			t.Fatalf("%s: no ptxas report of the entry in NVRTC's log:\n%s", r.entry, r.log)
		}
		t.Logf("%s: %d bytes spill stores, %d bytes spill loads", r.entry, stores, loads)
		if stores > stepSpillBound || loads > 2*stepSpillBound {
			t.Errorf("%s spills %d bytes (stores) and %d (loads), over %d and %d", r.entry, stores, loads,
				stepSpillBound, 2*stepSpillBound)
		}
	}
}

// nvrtcForTest loads NVRTC alone (no GPU or driver needed) and logs its
// version. Without NVRTC it skips the test, unless LLMSERVE_REQUIRE_NVRTC
// is set (CI installs one); require tells whether it is.
func nvrtcForTest(t testing.TB) (l *libs, require bool) {
	require = os.Getenv("LLMSERVE_REQUIRE_NVRTC") != ""
	l = &libs{}
	if err := l.loadNVRTC(); err != nil {
		if require {
			t.Fatalf("LLMSERVE_REQUIRE_NVRTC is set: %v", err)
		}
		t.Skipf("no NVRTC: %v", err)
	}
	var major, minor int32
	if err := l.nvcall(l.nvrtcVersion, "nvrtcVersion", uintptr(unsafe.Pointer(&major)), uintptr(unsafe.Pointer(&minor))); err != nil {
		t.Fatal(err)
	}
	t.Logf("NVRTC %d.%d at %s", major, minor, l.nvrtcPath)
	return l, require
}

// compileUnitReport compiles kernel unit u for sm_90 and returns NVRTC's
// log with ptxas's report of each kernel.
func compileUnitReport(l *libs, u int) (string, error) {
	opts := append(append([]string(nil), nvrtcOptions...), "-DKUNIT_ID="+strconv.Itoa(u),
		"--gpu-architecture=sm_90", "--ptxas-options=--verbose")
	_, log, err := l.nvrtcCompileLog(kernelSource, opts, true)
	return log, err
}

// entrySpills reads ptxas's verbose report in an NVRTC log: the spill
// stores and loads of entry function entry.
func entrySpills(log, entry string) (stores, loads int, ok bool) {
	re := regexp.MustCompile(`(?s)Compiling entry function '` + regexp.QuoteMeta(entry) +
		`'.*?Function properties for ` + regexp.QuoteMeta(entry) + `\s*\n[^\n]*?(\d+) bytes spill stores, (\d+) bytes spill loads`)
	m := re.FindStringSubmatch(log)
	if m == nil {
		return 0, 0, false
	}
	stores, _ = strconv.Atoi(m[1])
	loads, _ = strconv.Atoi(m[2])
	return stores, loads, true
}

func TestEntrySpills(t *testing.T) {
	log := `ptxas info    : Compiling entry function 'decode_step_4' for 'sm_90'
ptxas info    : Function properties for decode_step_4
ptxas         .     488 bytes stack frame, 208 bytes spill stores, 840 bytes spill loads
ptxas info    : Used 128 registers, 872 bytes smem
ptxas info    : Function properties for _Z13stepAttentionILi4EEvRK8StepArgsPKcPKfPfiPKi
ptxas         .     0 bytes stack frame, 300 bytes spill stores, 480 bytes spill loads
`
	if s, l, ok := entrySpills(log, "decode_step_4"); !ok || s != 208 || l != 840 {
		t.Errorf("decode_step_4: %d %d %v", s, l, ok)
	}
	if _, _, ok := entrySpills(log, "decode_step_8"); ok {
		t.Error("decode_step_8 found in a log without it")
	}
}

// TestKernelUnits compiles every kernel unit but the decode-step ones
// (their placement is stepUnit's, checked by TestStepKernelsAreLoaded)
// with NVRTC alone and checks that each kernel the backend loads is in
// exactly one unit and that no unit holds a kernel it does not load: the
// units are split by hand for compile time, and a kernel lost or doubled
// in a split would show only at run time. With -v it logs each kernel's
// registers and spills (sm_90).
func TestKernelUnits(t *testing.T) {
	l, require := nvrtcForTest(t)
	var units []int
	for u := range kernelUnits {
		if !isStepUnit(u) {
			units = append(units, u)
		}
	}
	logs := make([]string, kernelUnits)
	errs := make([]error, kernelUnits)
	jobs := make(chan int, len(units))
	for _, u := range units {
		jobs <- u
	}
	close(jobs)
	var wg sync.WaitGroup
	for range max(1, runtime.NumCPU()) {
		wg.Go(func() {
			for u := range jobs {
				logs[u], errs[u] = compileUnitReport(l, u)
			}
		})
	}
	wg.Wait()
	entry := regexp.MustCompile(`Compiling entry function '([^']+)'`)
	report := regexp.MustCompile(`(?s)Compiling entry function '([^']+)'.*?(\d+) bytes spill stores, (\d+) bytes spill loads\s*\nptxas info\s*: Used (\d+) registers`)
	where := map[string][]int{}
	for _, u := range units {
		if errs[u] != nil {
			t.Fatalf("unit %d: %v", u, errs[u])
		}
		ms := entry.FindAllStringSubmatch(logs[u], -1)
		if len(ms) == 0 {
			if !require && !strings.Contains(logs[u], "ptxas") {
				t.Skipf("the NVRTC at %s prints no ptxas report (an emulator?)", l.nvrtcPath)
			}
			t.Errorf("unit %d: no kernel in its ptxas report", u)
		}
		for _, m := range ms {
			where[m[1]] = append(where[m[1]], u)
		}
		for _, m := range report.FindAllStringSubmatch(logs[u], -1) {
			t.Logf("unit %d %s: %s registers, %s bytes spill stores, %s loads", u, m[1], m[4], m[2], m[3])
		}
	}
	loaded := map[string]bool{}
	for _, name := range kernelNames() {
		if isStepKernel(name) {
			continue
		}
		loaded[name] = true
		if us := where[name]; len(us) != 1 {
			t.Errorf("kernel %s is in units %v, want exactly one", name, us)
		}
	}
	for name, us := range where {
		if !loaded[name] {
			t.Errorf("unit %v holds %s, which the backend never loads", us, name)
		}
		// A unit a backend skips for its FusedDecodeMaxT holds only the
		// fused GEMVs of its row count, and holds all of them.
		for m, rowUnits := range dgemvRowUnits {
			for _, u := range us {
				if in := slices.Contains(rowUnits, u); in != (dgemvRows(name) == m) {
					t.Errorf("kernel %s (%d rows) is in unit %d; dgemvRowUnits[%d] = %v", name, dgemvRows(name), u, m, rowUnits)
				}
			}
		}
	}
}

// BenchmarkEagerUnits compiles, one at a time with NVRTC alone (sm_90), the
// units a lazy backend compiles at start-up, for FusedDecodeMaxT 1 (the
// server's) and 4: eager-s is their compile time in all, a cold start's
// compile work.
func BenchmarkEagerUnits(bm *testing.B) {
	l, _ := nvrtcForTest(bm)
	for _, fusedMaxT := range []int{1, 4} {
		bm.Run(fmt.Sprintf("fused-max-t=%d", fusedMaxT), func(bm *testing.B) {
			var units []int
			for u := range kernelUnits {
				if !isDeferredUnit(u, true, fusedMaxT) {
					units = append(units, u)
				}
			}
			for bm.Loop() {
				for _, u := range units {
					if _, err := compileUnitReport(l, u); err != nil {
						bm.Fatal(err)
					}
				}
			}
			bm.ReportMetric(bm.Elapsed().Seconds()/float64(bm.N), "eager-s")
			bm.ReportMetric(float64(len(units)), "units")
		})
	}
}
