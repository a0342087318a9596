package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/llmserve/llmserve/internal/shareddata"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/ml"
	"github.com/llmserve/llmserve/weights"
)

// noNetwork is an HTTP client that fails the test on any request.
func noNetwork(t *testing.T) *http.Client {
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		t.Errorf("unexpected network request: %s %s", r.Method, r.URL)
		return nil, errors.New("network forbidden in this test")
	})}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// tinyRepo serves qwen2-tiny with tokenizer files and files that must not be fetched.
func tinyRepo(t *testing.T, h *fakeHub, id string) *fakeRepo {
	td := shareddata.Dir(t)
	m := filepath.Join(td, "models", "qwen2-tiny")
	tok := filepath.Join(td, "tokenizers", "qwen3")
	return h.addRepo(id,
		&fakeFile{name: "config.json", data: readFile(t, filepath.Join(m, "config.json"))},
		&fakeFile{name: "generation_config.json", data: readFile(t, filepath.Join(m, "generation_config.json"))},
		&fakeFile{name: "model.safetensors", data: readFile(t, filepath.Join(m, "model.safetensors")), lfs: true},
		&fakeFile{name: "tokenizer.json", data: readFile(t, filepath.Join(tok, "tokenizer.json")), lfs: true},
		&fakeFile{name: "tokenizer_config.json", data: readFile(t, filepath.Join(tok, "tokenizer_config.json"))},
		&fakeFile{name: "README.md", data: []byte("# tiny\n")},
		&fakeFile{name: ".gitattributes", data: []byte("*.safetensors filter=lfs\n")},
		&fakeFile{name: "pytorch_model.bin", data: bytes.Repeat([]byte{7}, 1000), lfs: true},
		&fakeFile{name: "onnx/model.onnx", data: bytes.Repeat([]byte{8}, 1000), lfs: true},
	)
}

func (h *fakeHub) opts(cache string) Options {
	return Options{Endpoint: h.srv.URL, CacheDir: cache, Revision: "main", HTTPClient: h.srv.Client()}
}

// checkSnapshot verifies dir holds exactly want (byte for byte) as symlinks into blobs.
func checkSnapshot(t *testing.T, dir string, repo *fakeRepo, want ...string) {
	t.Helper()
	var got []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			got = append(got, filepath.ToSlash(rel))
		}
		return nil
	})
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("snapshot files %v, want %v", got, want)
	}
	for _, n := range want {
		p := filepath.Join(dir, n)
		if b := readFile(t, p); !bytes.Equal(b, repo.files[n].data) {
			t.Errorf("%s: content differs", n)
		}
		target, err := os.Readlink(p)
		if err != nil || !strings.Contains(filepath.ToSlash(target), "../blobs/") {
			t.Errorf("%s: not a symlink into blobs: %q %v", n, target, err)
		}
	}
}

func TestResolveDownloadThenCache(t *testing.T) {
	h := newFakeHub(t)
	repo := tinyRepo(t, h, "test-org/qwen2-tiny")
	cache := t.TempDir()
	var prog bytes.Buffer
	o := h.opts(cache)
	o.Progress = &prog
	dir, err := Resolve(context.Background(), "test-org/qwen2-tiny", o)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(cache, "models--test-org--qwen2-tiny", "snapshots", repo.commit); dir != want {
		t.Fatalf("dir %s, want %s", dir, want)
	}
	checkSnapshot(t, dir, repo, "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
	ref := readFile(t, filepath.Join(cache, "models--test-org--qwen2-tiny", "refs", "main"))
	if string(ref) != repo.commit {
		t.Errorf("refs/main = %q, want %q", ref, repo.commit)
	}
	// LFS blobs are named by sha256, others by git sha1, as huggingface_hub does.
	for _, n := range []string{"model.safetensors", "config.json"} {
		f := repo.files[n]
		name := f.gitSHA1()
		if f.lfs {
			name = f.sha256()
		}
		if _, err := os.Stat(filepath.Join(cache, "models--test-org--qwen2-tiny", "blobs", name)); err != nil {
			t.Errorf("blob of %s: %v", n, err)
		}
	}
	for _, r := range h.reqs() {
		if strings.Contains(r.Path, "pytorch_model.bin") || strings.Contains(r.Path, "onnx") || strings.Contains(r.Path, "README") {
			t.Errorf("unneeded file requested: %s", r.Path)
		}
	}
	if !strings.Contains(prog.String(), "100.0%") {
		t.Errorf("progress output %q lacks 100.0%%", prog.String())
	}
	src, err := weights.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	src.Close()

	// Second resolve: from the cache, no network at all, by branch or commit.
	o2 := h.opts(cache)
	o2.HTTPClient = noNetwork(t)
	for _, rev := range []string{"main", repo.commit} {
		o2.Revision = rev
		dir2, err := Resolve(context.Background(), "test-org/qwen2-tiny", o2)
		if err != nil || dir2 != dir {
			t.Errorf("cached resolve (%s) = %s, %v; want %s", rev, dir2, err, dir)
		}
	}
	// Offline also works now.
	o2.Offline = true
	if dir2, err := Resolve(context.Background(), "test-org/qwen2-tiny", o2); err != nil || dir2 != dir {
		t.Errorf("offline resolve = %s, %v", dir2, err)
	}
}

// A cache written by huggingface-cli (the same layout) is reused.
func TestResolveExistingCache(t *testing.T) {
	cache := t.TempDir()
	commit := strings.Repeat("ab", 20)
	repoDir := filepath.Join(cache, "models--Qwen--Qwen2.5-0.5B")
	snap := filepath.Join(repoDir, "snapshots", commit)
	os.MkdirAll(snap, 0o755)
	os.MkdirAll(filepath.Join(repoDir, "blobs"), 0o755)
	os.MkdirAll(filepath.Join(repoDir, "refs"), 0o755)
	os.WriteFile(filepath.Join(repoDir, "refs", "main"), []byte(commit), 0o644)
	for i, n := range []string{"config.json", "model.safetensors"} {
		blob := filepath.Join(repoDir, "blobs", fmt.Sprintf("blob%d", i))
		os.WriteFile(blob, []byte("x"), 0o644)
		os.Symlink(filepath.Join("..", "..", "blobs", fmt.Sprintf("blob%d", i)), filepath.Join(snap, n))
	}
	o := Options{CacheDir: cache, HTTPClient: noNetwork(t), Endpoint: "http://127.0.0.1:1"}
	dir, err := Resolve(context.Background(), "Qwen/Qwen2.5-0.5B", o)
	if err != nil || dir != snap {
		t.Fatalf("Resolve = %s, %v", dir, err)
	}
	// A dangling link (blob deleted) makes the snapshot incomplete: offline fails clearly.
	os.Remove(filepath.Join(repoDir, "blobs", "blob1"))
	o.Offline = true
	_, err = Resolve(context.Background(), "Qwen/Qwen2.5-0.5B", o)
	if !errors.Is(err, ErrNotCached) || !strings.Contains(err.Error(), "HF_HUB_OFFLINE") {
		t.Errorf("offline with incomplete snapshot: %v", err)
	}
}

func TestResolveSharded(t *testing.T) {
	h := newFakeHub(t)
	tmp := t.TempDir()
	wm := map[string]string{}
	var files []*fakeFile
	for i, names := range [][]string{{"a.weight", "b.weight"}, {"c.weight"}} {
		shard := fmt.Sprintf("model-%05d-of-00002.safetensors", i+1)
		var ts []*weights.Tensor
		for _, n := range names {
			ts = append(ts, &weights.Tensor{Name: n, DType: ml.BF16, Shape: []int{4, 8}, Data: weights.Random(ml.BF16, []int{4, 8}, 1, n, 1)})
			wm[n] = shard
		}
		p := filepath.Join(tmp, shard)
		if err := weights.WriteFile(p, ts, nil); err != nil {
			t.Fatal(err)
		}
		files = append(files, &fakeFile{name: shard, data: readFile(t, p), lfs: true})
	}
	idx, _ := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 192}, "weight_map": wm})
	files = append(files,
		&fakeFile{name: "model.safetensors.index.json", data: idx},
		&fakeFile{name: "config.json", data: []byte(`{"architectures":["LlamaForCausalLM"]}`)},
		// A consolidated copy, as some repos ship besides the shards: not fetched.
		&fakeFile{name: "consolidated.safetensors", data: bytes.Repeat([]byte{1}, 100), lfs: true},
	)
	repo := h.addRepo("org/sharded", files...)
	dir, err := Resolve(context.Background(), "org/sharded", h.opts(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	checkSnapshot(t, dir, repo, "config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
	src, err := weights.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if got := strings.Join(src.Names(), ","); got != "a.weight,b.weight,c.weight" {
		t.Errorf("tensors %s", got)
	}
}

func TestResolveResumesInterruptedDownload(t *testing.T) {
	h := newFakeHub(t)
	repo := tinyRepo(t, h, "org/tiny")
	size := len(repo.files["model.safetensors"].data)
	cut := size / 2
	h.setCut("model.safetensors", cut)
	dir, err := Resolve(context.Background(), "org/tiny", h.opts(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	checkSnapshot(t, dir, repo, "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
	var ranges []string
	for _, r := range h.reqs() {
		if strings.HasPrefix(r.Path, "/cdn/") && strings.Contains(r.Path, repo.files["model.safetensors"].sha256()) || strings.HasSuffix(r.Path, "model.safetensors") {
			ranges = append(ranges, r.Range)
		}
	}
	// resolve+cdn without Range (cut), then resolve+cdn with Range from the cut.
	want := fmt.Sprintf("bytes=%d-", cut)
	if !slices.Contains(ranges, want) {
		t.Errorf("requests' Range headers %q lack %q", ranges, want)
	}
}

// A partial blob left by an earlier process is continued, not restarted.
func TestResolveResumesAcrossRuns(t *testing.T) {
	h := newFakeHub(t)
	repo := tinyRepo(t, h, "org/tiny")
	f := repo.files["model.safetensors"]
	cache := t.TempDir()
	blobs := filepath.Join(cache, "models--org--tiny", "blobs")
	os.MkdirAll(blobs, 0o755)
	have := 1000
	if err := os.WriteFile(filepath.Join(blobs, f.sha256()+".incomplete"), f.data[:have], 0o644); err != nil {
		t.Fatal(err)
	}
	dir, err := Resolve(context.Background(), "org/tiny", h.opts(cache))
	if err != nil {
		t.Fatal(err)
	}
	if b := readFile(t, filepath.Join(dir, "model.safetensors")); !bytes.Equal(b, f.data) {
		t.Error("resumed file differs")
	}
	var found bool
	for _, r := range h.reqs() {
		if strings.HasPrefix(r.Path, "/cdn/") && strings.Contains(r.Path, f.sha256()) {
			if r.Range != fmt.Sprintf("bytes=%d-", have) {
				t.Errorf("CDN request Range %q, want bytes=%d-", r.Range, have)
			}
			found = true
		}
	}
	if !found {
		t.Error("no CDN request for model.safetensors")
	}
	if _, err := os.Stat(filepath.Join(blobs, f.sha256()+".incomplete")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf(".incomplete left behind: %v", err)
	}
}

func TestResolveRejectsCorruptFile(t *testing.T) {
	for _, name := range []string{"model.safetensors", "config.json"} { // sha256 (LFS) and git sha1
		t.Run(name, func(t *testing.T) {
			h := newFakeHub(t)
			repo := tinyRepo(t, h, "org/tiny")
			h.setCorrupt(name, true)
			cache := t.TempDir()
			_, err := Resolve(context.Background(), "org/tiny", h.opts(cache))
			if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), name) {
				t.Fatalf("error %v, want ErrChecksum naming %s", err, name)
			}
			f := repo.files[name]
			blobs := filepath.Join(cache, "models--org--tiny", "blobs")
			for _, b := range []string{f.sha256(), f.gitSHA1()} {
				for _, suffix := range []string{"", ".incomplete"} {
					if _, err := os.Stat(filepath.Join(blobs, b+suffix)); !errors.Is(err, fs.ErrNotExist) {
						t.Errorf("corrupt bytes kept as %s%s: %v", b, suffix, err)
					}
				}
			}
			snap := filepath.Join(cache, "models--org--tiny", "snapshots", repo.commit)
			if _, err := os.Stat(filepath.Join(snap, name)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("corrupt file in snapshot: %v", err)
			}
			if _, err := os.Stat(filepath.Join(cache, "models--org--tiny", "refs", "main")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("ref written for a failed download: %v", err)
			}
			// Offline must not pick up the partial snapshot.
			o := h.opts(cache)
			o.Offline, o.HTTPClient = true, noNetwork(t)
			if _, err := Resolve(context.Background(), "org/tiny", o); !errors.Is(err, ErrNotCached) {
				t.Errorf("offline after failure: %v", err)
			}
			// Once the hub serves good bytes, it succeeds.
			h.setCorrupt(name, false)
			if _, err := Resolve(context.Background(), "org/tiny", h.opts(cache)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestResolveOfflineNeverTouchesNetwork(t *testing.T) {
	o := Options{CacheDir: t.TempDir(), Offline: true, HTTPClient: noNetwork(t), Endpoint: "http://127.0.0.1:1"}
	_, err := Resolve(context.Background(), "Qwen/Qwen2.5-0.5B-Instruct", o)
	if !errors.Is(err, ErrNotCached) {
		t.Fatalf("error %v, want ErrNotCached", err)
	}
	for _, s := range []string{"Qwen/Qwen2.5-0.5B-Instruct", "HF_HUB_OFFLINE", o.CacheDir} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
}

func TestResolveHTTPErrors(t *testing.T) {
	h := newFakeHub(t)
	h.token = "hf_good"
	tinyRepo(t, h, "org/tiny")
	priv := tinyRepo(t, h, "org/private")
	priv.private = true
	gated := tinyRepo(t, h, "org/gated")
	gated.gated = true
	h.addRepo("org/noweights", &fakeFile{name: "config.json", data: []byte("{}")}, &fakeFile{name: "pytorch_model.bin", data: []byte("x"), lfs: true})
	cases := []struct {
		repo, token, rev string
		want             []error
		msg              string
	}{
		{"org/missing", "", "", []error{ErrRepoNotFound, ErrAuth}, "HF_TOKEN"},
		{"org/missing", "hf_good", "", []error{ErrRepoNotFound}, "404"},
		{"org/private", "", "", []error{ErrAuth}, "set HF_TOKEN"},
		{"org/private", "hf_bad", "", []error{ErrAuth}, "refused"},
		{"org/gated", "", "", []error{ErrAuth}, "gated"},
		{"org/tiny", "", "v9", []error{ErrRevisionNotFound}, "v9"},
		{"org/noweights", "", "", []error{ErrNoWeights}, "safetensors"},
	}
	for _, c := range cases {
		t.Run(c.repo+"/"+c.token+c.rev, func(t *testing.T) {
			o := h.opts(t.TempDir())
			o.Token, o.Revision = c.token, c.rev
			_, err := Resolve(context.Background(), c.repo, o)
			for _, w := range c.want {
				if !errors.Is(err, w) {
					t.Errorf("error %v is not %v", err, w)
				}
			}
			if err != nil && !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q lacks %q", err, c.msg)
			}
		})
	}
	// With the right token the private and gated repos download, and the token was sent.
	for _, id := range []string{"org/private", "org/gated"} {
		h.reset()
		o := h.opts(t.TempDir())
		o.Token = "hf_good"
		if _, err := Resolve(context.Background(), id, o); err != nil {
			t.Errorf("%s with token: %v", id, err)
		}
		for _, r := range h.reqs() {
			if strings.HasPrefix(r.Path, "/api/") && r.Auth != "Bearer hf_good" {
				t.Errorf("API request without token: %+v", r)
			}
		}
	}
}

// Mirrors that list files without hashes: the HEAD headers (X-Linked-Etag,
// ETag) give the hash to verify against.
func TestResolveHashesFromHeaders(t *testing.T) {
	h := newFakeHub(t)
	h.noHashes = true
	repo := tinyRepo(t, h, "org/tiny")
	cache := t.TempDir()
	dir, err := Resolve(context.Background(), "org/tiny", h.opts(cache))
	if err != nil {
		t.Fatal(err)
	}
	checkSnapshot(t, dir, repo, "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
	if _, err := os.Stat(filepath.Join(cache, "models--org--tiny", "blobs", repo.files["model.safetensors"].sha256())); err != nil {
		t.Error(err)
	}
	// And a corrupt file is still caught.
	h.setCorrupt("model.safetensors", true)
	if _, err := Resolve(context.Background(), "org/tiny", h.opts(t.TempDir())); !errors.Is(err, ErrChecksum) {
		t.Errorf("corrupt via headers: %v", err)
	}
}

func TestResolveSkipWeights(t *testing.T) {
	h := newFakeHub(t)
	repo := tinyRepo(t, h, "org/tiny")
	o := h.opts(t.TempDir())
	o.SkipWeights = true
	dir, err := Resolve(context.Background(), "org/tiny", o)
	if err != nil {
		t.Fatal(err)
	}
	checkSnapshot(t, dir, repo, "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
}

func TestResolveLocalAndBadNames(t *testing.T) {
	dir := t.TempDir()
	o := Options{CacheDir: t.TempDir(), HTTPClient: noNetwork(t)}
	if got, err := Resolve(context.Background(), dir, o); err != nil || got != dir {
		t.Errorf("local dir: %s, %v", got, err)
	}
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o644)
	for _, m := range []string{file, "nonexistent-dir", "./a/b", "a/b/c", "Org/../x", "Org/Na--me", "/abs/missing"} {
		if _, err := Resolve(context.Background(), m, o); !errors.Is(err, ErrBadModel) {
			t.Errorf("%q: %v, want ErrBadModel", m, err)
		}
	}
	for _, ok := range []string{"Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.2-1B", "a/b_c.d"} {
		if !IsRepoID(ok) {
			t.Errorf("IsRepoID(%q) = false", ok)
		}
	}
	o.Revision = "../../etc"
	if _, err := Resolve(context.Background(), "a/b", o); err == nil {
		t.Error("path-escaping revision accepted")
	}
}

func TestOptionsFromEnv(t *testing.T) {
	home := t.TempDir()
	tokFile := filepath.Join(home, "hfhome", "token")
	os.MkdirAll(filepath.Dir(tokFile), 0o755)
	os.WriteFile(tokFile, []byte("hf_file\n"), 0o600)
	cases := []struct {
		env  map[string]string
		want Options
	}{
		{nil, Options{Endpoint: DefaultEndpoint, Revision: "main", CacheDir: filepath.Join(home, ".cache", "huggingface", "hub")}},
		{map[string]string{"HF_HOME": filepath.Join(home, "hfhome"), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://mirror/"},
			Options{Endpoint: "http://mirror", Revision: "main", CacheDir: filepath.Join(home, "hfhome", "hub"), Offline: true, Token: "hf_file"}},
		{map[string]string{"HF_HOME": filepath.Join(home, "hfhome"), "HF_HUB_CACHE": "/c", "HF_TOKEN": "hf_env", "HF_HUB_OFFLINE": "0"},
			Options{Endpoint: DefaultEndpoint, Revision: "main", CacheDir: "/c", Token: "hf_env"}},
		{map[string]string{"XDG_CACHE_HOME": "/x", "HUGGINGFACE_HUB_CACHE": "", "HF_HUB_OFFLINE": "true"},
			Options{Endpoint: DefaultEndpoint, Revision: "main", CacheDir: "/x/huggingface/hub", Offline: true}},
	}
	for i, c := range cases {
		got := optionsFromEnv(func(k string) string { return c.env[k] }, home)
		if got.Endpoint != c.want.Endpoint || got.CacheDir != c.want.CacheDir || got.Token != c.want.Token || got.Offline != c.want.Offline || got.Revision != c.want.Revision {
			t.Errorf("case %d: got %+v, want %+v", i, got, c.want)
		}
	}
}

func TestResolveCancelled(t *testing.T) {
	h := newFakeHub(t)
	tinyRepo(t, h, "org/tiny")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Resolve(ctx, "org/tiny", h.opts(t.TempDir())); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}
