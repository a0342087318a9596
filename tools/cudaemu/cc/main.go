// Command cudaemu-cc is the compiler behind cudaemu's NVRTC: it turns a
// CUDA kernel unit into a host shared object. It replaces each inline-PTX
// statement by a call into the emulator (a fixed table: an instruction it
// does not know is an error, never skipped), preprocesses the unit with
// emu_kernel.h, adds a launch thunk per extern "C" kernel (with its
// parameters' sizes and alignments, so the runtime can unpack a launch's
// argument buffer) and compiles the result with clang++.
//
//	cudaemu-cc -o unit.so [-log file] [NVRTC options] unit.cu
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

func main() {
	var out, logPath, src string
	var defines []string
	arch := "900"
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-o" && i+1 < len(args):
			i++
			out = args[i]
		case a == "-log" && i+1 < len(args):
			i++
			logPath = args[i]
		case strings.HasPrefix(a, "-D"):
			defines = append(defines, a)
		case strings.HasPrefix(a, "--gpu-architecture="):
			v := a[strings.LastIndex(a, "_")+1:]
			arch = v + "0"
		case strings.HasPrefix(a, "-"):
			// -std, -default-device, vectorization hints: host C++ has its own.
		default:
			src = a
		}
	}
	if err := run(src, out, arch, defines); err != nil {
		msg := "cudaemu-cc: " + err.Error() + "\n"
		if logPath != "" {
			_ = os.WriteFile(logPath, []byte(msg), 0o644)
		}
		fmt.Fprint(os.Stderr, msg)
		os.Exit(1)
	}
}

func compiler() string {
	if c := os.Getenv("CUDAEMU_CXX"); c != "" {
		return c
	}
	for _, c := range []string{"clang++", "clang++-19", "clang++-18", "clang++-17", "clang++-16", "clang++-15", "g++"} {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	return "clang++"
}

func run(src, out, arch string, defines []string) error {
	if src == "" || out == "" {
		return fmt.Errorf("usage: cudaemu-cc -o out.so [-log file] [options] unit.cu")
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	rewritten, err := rewriteAsm(string(b))
	if err != nil {
		return err
	}
	rewritten = rewriteDynShared(rewritten)
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	inc := filepath.Dir(exe)
	if v := os.Getenv("CUDAEMU_INCLUDE"); v != "" {
		inc = v
	}
	dir := filepath.Dir(out)
	rw := filepath.Join(dir, "rewritten.cu")
	pre := filepath.Join(dir, "pre.ii")
	final := filepath.Join(dir, "final.cc")
	if err := os.WriteFile(rw, []byte(rewritten), 0o644); err != nil {
		return err
	}
	cxx := compiler()
	pp := append([]string{"-E", "-x", "c++", "-std=c++20", "-I", inc, "-include", "emu_kernel.h",
		"-D__CUDA_ARCH__=" + arch, "-D__CUDACC__", "-D__NVCC__"}, defines...)
	pp = append(pp, rw, "-o", pre)
	if o, err := exec.Command(cxx, pp...).CombinedOutput(); err != nil {
		return fmt.Errorf("preprocessing: %v\n%s", err, o)
	}
	p, err := os.ReadFile(pre)
	if err != nil {
		return err
	}
	thunks, err := thunks(string(p))
	if err != nil {
		return err
	}
	if err := os.WriteFile(final, append(p, thunks...), 0o644); err != nil {
		return err
	}
	opt := "-O1"
	if v := os.Getenv("CUDAEMU_OPT"); v != "" {
		opt = v
	}
	cc := []string{"-x", "c++", "-std=c++20", opt, "-g0", "-fPIC", "-shared", "-w", final, "-o", out}
	if o, err := exec.Command(cxx, cc...).CombinedOutput(); err != nil {
		return fmt.Errorf("compiling: %v\n%s", err, o)
	}
	return nil
}

// ptx maps an inline-PTX template (whitespace removed) to the C++ that
// replaces the asm statement; %N is the statement's N-th operand
// (outputs first, then inputs).
var ptx = map[string]string{
	"griddepcontrol.wait;":                                "cudaemu_nop()",
	"griddepcontrol.launch_dependents;":                   "cudaemu_nop()",
	"cvt.f32.f16%0,%1;":                                   "%0 = cudaemu_h2f(%1)",
	"cvt.rn.f16.f32%0,%1;":                                "%0 = cudaemu_f2h(%1)",
	"cvt.rn.f16x2.e4m3x2%0,%1;":                           "%0 = cudaemu_e4m3x2_f16x2(%1)",
	"cvt.rn.bf16x2.f32%0,%1,%2;":                          "%0 = cudaemu_f2bf2(%1, %2)",
	"ex2.approx.ftz.f32%0,%1;":                            "%0 = cudaemu_ex2_ftz(%1)",
	"{.reg.u64t;cvta.to.shared.u64t,%1;cvt.u32.u64%0,t;}": "%0 = cudaemu_smem32(%1)",
	"mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32{%0,%1,%2,%3},{%4,%5,%6,%7},{%8,%9},{%0,%1,%2,%3};": "cudaemu_mma_bf16(&%0, &%1, &%2, &%3, %4, %5, %6, %7, %8, %9)",
	"ldmatrix.sync.aligned.m8n8.x4.shared.b16{%0,%1,%2,%3},[%4];":                                           "cudaemu_ldsm_x4(&%0, &%1, &%2, &%3, %4, 0)",
	"ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16{%0,%1,%2,%3},[%4];":                                     "cudaemu_ldsm_x4(&%0, &%1, &%2, &%3, %4, 1)",
	"cp.async.cg.shared.global[%0],[%1],16,%2;":                                                             "cudaemu_cp16(%0, %1, %2)",
	"cp.async.commit_group;":                                 "cudaemu_nop()",
	"cp.async.bulk.prefetch.L2.global[%0],%1;":               "cudaemu_nop()",
	"cp.async.wait_group%0;":                                 "cudaemu_nop()",
	"ld.global.nc.L1::no_allocate.v2.u32{%0,%1},[%2];":       "cudaemu_ld_v2(%0, %1, %2)",
	"ld.global.nc.L1::no_allocate.v4.u32{%0,%1,%2,%3},[%4];": "cudaemu_ld_v4(%0, %1, %2, %3, %4)",
	"ld.global.nc.v4.u32{%0,%1,%2,%3},[%4];":                 "cudaemu_ld_v4(%0, %1, %2, %3, %4)",
	"ld.acquire.gpu.global.u32%0,[%1];":                      "%0 = cudaemu_ld_acquire(%1)",
	"ld.relaxed.gpu.global.u32%0,[%1];":                      "%0 = cudaemu_ld_relaxed(%1)",
	"st.release.gpu.global.u32[%0],%1;":                      "cudaemu_st_release(%0, %1)",
	"fence.acq_rel.gpu;":                                     "cudaemu_fence()",
	"atom.add.release.gpu.global.u32%0,[%1],%2;":             "%0 = cudaemu_atom_add_release(%1, %2)",
}

// dynSharedRe matches a block-scope extern __shared__ array (dynamic shared
// memory): `extern __shared__ [__align__(n)] T name[];`.
var dynSharedRe = regexp.MustCompile(`extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?([A-Za-z_][\w ]*?)\s+(\w+)\s*\[\s*\]\s*;`)

// rewriteDynShared points each extern __shared__ array at the running
// block's dynamic shared memory (cudaemu_dynsmem: 128-byte aligned).
func rewriteDynShared(src string) string {
	return dynSharedRe.ReplaceAllString(src, "$1* const $2 = ($1*)cudaemu_dynsmem();")
}

var asmStart = regexp.MustCompile(`\basm\s*(volatile\s*)?\(`)

// rewriteAsm replaces every asm statement of s by its emulation.
func rewriteAsm(s string) (string, error) {
	var b strings.Builder
	for {
		loc := asmStart.FindStringIndex(s)
		if loc == nil {
			b.WriteString(s)
			return b.String(), nil
		}
		b.WriteString(s[:loc[0]])
		end, err := closeParen(s, loc[1]-1)
		if err != nil {
			return "", err
		}
		body := s[loc[1] : end-1]
		repl, err := emulate(body)
		if err != nil {
			return "", err
		}
		b.WriteString(repl)
		s = s[end:]
	}
}

// closeParen returns the index just past the parenthesis that closes the
// one at open, skipping string and character literals.
func closeParen(s string, open int) (int, error) {
	depth := 0
	for i := open; i < len(s); i++ {
		switch s[i] {
		case '"', '\'':
			q := s[i]
			for i++; i < len(s) && s[i] != q; i++ {
				if s[i] == '\\' {
					i++
				}
			}
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return i + 1, nil
			}
		}
	}
	return 0, fmt.Errorf("unbalanced parentheses after offset %d", open)
}

// splitTop splits s at sep where it is outside parentheses, brackets and
// literals.
func splitTop(s string, sep byte) []string {
	var parts []string
	depth, last := 0, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '\'':
			for i++; i < len(s) && s[i] != c; i++ {
				if s[i] == '\\' {
					i++
				}
			}
		case '(', '[', '{':
			depth++
		case ')', ']', '}':
			depth--
		default:
			if c == sep && depth == 0 {
				parts = append(parts, s[last:i])
				last = i + 1
			}
		}
	}
	return append(parts, s[last:])
}

var operandRe = regexp.MustCompile(`^\s*"([^"]*)"\s*\((.*)\)\s*$`)

func emulate(body string) (string, error) {
	sections := splitTop(body, ':')
	var tmpl strings.Builder
	for _, lit := range regexp.MustCompile(`"((?:[^"\\]|\\.)*)"`).FindAllStringSubmatch(sections[0], -1) {
		tmpl.WriteString(lit[1])
	}
	key := strings.Join(strings.Fields(tmpl.String()), "")
	repl, ok := ptx[key]
	if !ok {
		return "", fmt.Errorf("inline PTX the emulator does not implement: %q", tmpl.String())
	}
	var ops []string
	for _, sec := range sections[1:min(len(sections), 3)] {
		if strings.TrimSpace(sec) == "" {
			continue
		}
		for _, o := range splitTop(sec, ',') {
			m := operandRe.FindStringSubmatch(o)
			if m == nil {
				return "", fmt.Errorf("operand %q of %q", o, tmpl.String())
			}
			ops = append(ops, "("+m[2]+")")
		}
	}
	for i := len(ops) - 1; i >= 0; i-- { // %10 before %1
		repl = strings.ReplaceAll(repl, fmt.Sprintf("%%%d", i), ops[i])
	}
	if strings.Contains(repl, "%") {
		return "", fmt.Errorf("%q: an operand the statement lacks", tmpl.String())
	}
	return "(" + repl + ")", nil
}

var kernelRe = regexp.MustCompile(`extern\s+"C"\s+__attribute__\(\(annotate\("cudaemu_kernel"\)\)\)\s+void\s+(\w+)\s*\(`)
var paramRe = regexp.MustCompile(`^(.*?)\b(\w+)\s*$`)

// thunks returns, for every kernel defined in the preprocessed unit p, a
// thunk that calls it with arguments unpacked from an array of pointers,
// and its parameters' sizes and alignments.
func thunks(p string) ([]byte, error) {
	var b strings.Builder
	seen := map[string]bool{}
	for _, m := range kernelRe.FindAllStringSubmatchIndex(p, -1) {
		name := p[m[2]:m[3]]
		end, err := closeParen(p, m[1]-1)
		if err != nil {
			return nil, err
		}
		// A definition, not a declaration.
		rest := strings.TrimLeft(p[end:], " \t\r\n")
		if !strings.HasPrefix(rest, "{") || seen[name] {
			continue
		}
		seen[name] = true
		params := strings.TrimSpace(p[m[1] : end-1])
		var types []string
		if params != "" && params != "void" {
			for _, prm := range splitTop(params, ',') {
				pm := paramRe.FindStringSubmatch(strings.TrimSpace(prm))
				if pm == nil || strings.TrimSpace(pm[1]) == "" {
					return nil, fmt.Errorf("kernel %s: parameter %q", name, prm)
				}
				types = append(types, strings.TrimSpace(pm[1]))
			}
		}
		var call, sizes, aligns []string
		for i, t := range types {
			call = append(call, fmt.Sprintf("*(%s *)p[%d]", t, i))
			sizes = append(sizes, fmt.Sprintf("sizeof(%s)", t))
			aligns = append(aligns, fmt.Sprintf("alignof(%s)", t))
		}
		sizes = append(sizes, "0")
		aligns = append(aligns, "0")
		fmt.Fprintf(&b, "\nextern \"C\" void cudaemu_thunk_%s(void** p) { (void)p; %s(%s); }\n", name, name, strings.Join(call, ", "))
		fmt.Fprintf(&b, "extern \"C\" const unsigned cudaemu_argsizes_%s[] = {%s};\n", name, strings.Join(sizes, ", "))
		fmt.Fprintf(&b, "extern \"C\" const unsigned cudaemu_argaligns_%s[] = {%s};\n", name, strings.Join(aligns, ", "))
		fmt.Fprintf(&b, "extern \"C\" const unsigned cudaemu_nargs_%s = %d;\n", name, len(types))
	}
	return []byte(b.String()), nil
}
