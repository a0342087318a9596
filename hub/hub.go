// Package hub resolves a --model argument to a local model directory: a local
// directory as is, or a Hugging Face repo id ("Org/Name") through the standard
// Hugging Face cache (the layout huggingface-cli writes, so existing downloads
// are reused), downloading what is missing from the hub.
//
// Cache layout (as huggingface_hub's):
//
//	<cache>/models--Org--Name/blobs/<sha256 or git sha1>
//	<cache>/models--Org--Name/refs/<revision>            (holds the commit hash)
//	<cache>/models--Org--Name/snapshots/<commit>/<file>  (symlinks to ../../blobs/...)
package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// DefaultEndpoint is the public hub.
const DefaultEndpoint = "https://huggingface.co"

var (
	// ErrNotCached: offline mode and the model is not (completely) in the cache.
	ErrNotCached = errors.New("hub: model not in the local cache")
	// ErrRepoNotFound: the hub has no such repository (or hides it: see ErrAuth).
	ErrRepoNotFound = errors.New("hub: repository not found")
	// ErrRevisionNotFound: the repository has no such branch, tag or commit.
	ErrRevisionNotFound = errors.New("hub: revision not found")
	// ErrEntryNotFound: a file listed by the hub could not be fetched.
	ErrEntryNotFound = errors.New("hub: file not found")
	// ErrAuth: 401/403: private or gated repository, or a bad token.
	ErrAuth = errors.New("hub: authentication required or access denied")
	// ErrChecksum: downloaded bytes do not match the hub's hash or size.
	ErrChecksum = errors.New("hub: checksum mismatch")
	// ErrNoWeights: the repository has no safetensors weights.
	ErrNoWeights = errors.New("hub: repository has no safetensors weights")
	// ErrBadModel: the argument is neither a directory nor a repo id.
	ErrBadModel = errors.New("hub: not a local directory or a Hugging Face repo id")
)

// Options configure Resolve. OptionsFromEnv fills them as huggingface_hub does.
type Options struct {
	Endpoint   string       // HF_ENDPOINT, default https://huggingface.co
	Token      string       // HF_TOKEN (else the token file huggingface-cli login writes)
	CacheDir   string       // HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
	Offline    bool         // HF_HUB_OFFLINE=1: never touch the network
	Revision   string       // branch, tag or commit; default "main"
	Progress   io.Writer    // download progress (a bar when it is a terminal); nil = quiet
	Logger     *slog.Logger // nil = discard
	HTTPClient *http.Client // nil = a client without overall timeout (downloads are long)

	// SkipWeights fetches only config and tokenizer files (for --load-format dummy).
	SkipWeights bool
}

// OptionsFromEnv reads HF_ENDPOINT, HF_TOKEN (or HUGGING_FACE_HUB_TOKEN, or the
// file at HF_TOKEN_PATH / $HF_HOME/token), HF_HUB_CACHE (or HUGGINGFACE_HUB_CACHE),
// HF_HOME, XDG_CACHE_HOME and HF_HUB_OFFLINE. Progress and Logger stay nil.
func OptionsFromEnv() Options {
	home, _ := os.UserHomeDir()
	return optionsFromEnv(os.Getenv, home)
}

func optionsFromEnv(getenv func(string) string, home string) Options {
	o := Options{Endpoint: DefaultEndpoint, Revision: "main"}
	if e := getenv("HF_ENDPOINT"); e != "" {
		o.Endpoint = strings.TrimRight(e, "/")
	}
	hfHome := getenv("HF_HOME")
	if hfHome == "" {
		xdg := getenv("XDG_CACHE_HOME")
		if xdg == "" {
			xdg = filepath.Join(home, ".cache")
		}
		hfHome = filepath.Join(xdg, "huggingface")
	}
	switch {
	case getenv("HF_HUB_CACHE") != "":
		o.CacheDir = getenv("HF_HUB_CACHE")
	case getenv("HUGGINGFACE_HUB_CACHE") != "":
		o.CacheDir = getenv("HUGGINGFACE_HUB_CACHE")
	default:
		o.CacheDir = filepath.Join(hfHome, "hub")
	}
	o.Token = getenv("HF_TOKEN")
	if o.Token == "" {
		o.Token = getenv("HUGGING_FACE_HUB_TOKEN")
	}
	if o.Token == "" {
		p := getenv("HF_TOKEN_PATH")
		if p == "" {
			p = filepath.Join(hfHome, "token")
		}
		if b, err := os.ReadFile(p); err == nil {
			o.Token = strings.TrimSpace(string(b))
		}
	}
	switch strings.ToLower(strings.TrimSpace(getenv("HF_HUB_OFFLINE"))) {
	case "1", "true", "yes", "on":
		o.Offline = true
	}
	return o
}

// repoIDRe is the hub's repo id syntax: namespace/name of word chars, '-' and '.'.
var repoIDRe = regexp.MustCompile(`^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9_.][\w.-]{0,95}$`)

// IsRepoID reports whether s has the shape of a hub repo id "Org/Name".
func IsRepoID(s string) bool {
	return repoIDRe.MatchString(s) && !strings.Contains(s, "--") && !strings.Contains(s, "..")
}

// Resolve maps model to a local directory. An existing directory is returned
// as is. A repo id is looked up in the cache (a complete snapshot of the
// revision is used without any network access), else the needed files
// (config, generation config, tokenizer files, chat template, safetensors
// and their index) are downloaded, resumably and verified against the hub's
// hashes, and the snapshot directory is returned.
func Resolve(ctx context.Context, model string, opts Options) (string, error) {
	if st, err := os.Stat(model); err == nil {
		if !st.IsDir() {
			return "", fmt.Errorf("%w: %s is a file, not a model directory", ErrBadModel, model)
		}
		return model, nil
	}
	if !IsRepoID(model) {
		return "", fmt.Errorf("%w: %q (no such directory; a repo id looks like Qwen/Qwen2.5-0.5B-Instruct): %w", ErrBadModel, model, fs.ErrNotExist)
	}
	r, err := newResolver(model, opts)
	if err != nil {
		return "", err
	}
	if dir, ok := r.cachedSnapshot(); ok {
		r.log.Debug("hub: using cached snapshot", "repo", model, "revision", r.rev, "dir", dir)
		return dir, nil
	}
	if r.opts.Offline {
		return "", fmt.Errorf("%w: %s (revision %s) is not completely in %s, and HF_HUB_OFFLINE is set: download it once online (or unset HF_HUB_OFFLINE)", ErrNotCached, model, r.rev, r.opts.CacheDir)
	}
	return r.download(ctx)
}

type resolver struct {
	repo    string
	rev     string
	opts    Options
	log     *slog.Logger
	client  *http.Client
	repoDir string
}

func newResolver(repo string, opts Options) (*resolver, error) {
	if opts.Endpoint == "" {
		opts.Endpoint = DefaultEndpoint
	}
	opts.Endpoint = strings.TrimRight(opts.Endpoint, "/")
	if opts.Revision == "" {
		opts.Revision = "main"
	}
	if opts.CacheDir == "" {
		opts.CacheDir = OptionsFromEnv().CacheDir
	}
	if !fs.ValidPath(opts.Revision) || strings.Contains(opts.Revision, `\`) {
		return nil, fmt.Errorf("%w: bad revision %q", ErrRevisionNotFound, opts.Revision)
	}
	r := &resolver{
		repo:    repo,
		rev:     opts.Revision,
		opts:    opts,
		log:     opts.Logger,
		client:  opts.HTTPClient,
		repoDir: filepath.Join(opts.CacheDir, "models--"+strings.ReplaceAll(repo, "/", "--")),
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.client == nil {
		r.client = &http.Client{}
	}
	return r, nil
}

var commitRe = regexp.MustCompile(`^[0-9a-f]{40}$`)

// cachedSnapshot finds a complete snapshot of r.rev in the cache.
func (r *resolver) cachedSnapshot() (string, bool) {
	commit := r.rev
	if !commitRe.MatchString(commit) {
		b, err := os.ReadFile(filepath.Join(r.repoDir, "refs", filepath.FromSlash(r.rev)))
		if err != nil {
			return "", false
		}
		commit = strings.TrimSpace(string(b))
		if !commitRe.MatchString(commit) {
			return "", false
		}
	}
	dir := filepath.Join(r.repoDir, "snapshots", commit)
	if !complete(dir, r.opts.SkipWeights) {
		return "", false
	}
	return dir, true
}

// complete reports whether a snapshot holds config.json and, unless
// skipWeights, a full set of safetensors weights (every shard of the index,
// or model.safetensors, or some *.safetensors). Stat follows the symlinks, so
// dangling links to missing blobs count as missing.
func complete(dir string, skipWeights bool) bool {
	if !exists(filepath.Join(dir, "config.json")) {
		return false
	}
	if skipWeights {
		return true
	}
	if b, err := os.ReadFile(filepath.Join(dir, "model.safetensors.index.json")); err == nil {
		shards, err := indexShards(b)
		if err != nil || len(shards) == 0 {
			return false
		}
		for _, s := range shards {
			if !exists(filepath.Join(dir, filepath.FromSlash(s))) {
				return false
			}
		}
		return true
	}
	if exists(filepath.Join(dir, "model.safetensors")) {
		return true
	}
	m, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	for _, p := range m {
		if exists(p) {
			return true
		}
	}
	return false
}

func exists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// indexShards lists the distinct shard files of a safetensors index.
func indexShards(b []byte) ([]string, error) {
	var ix struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(b, &ix); err != nil {
		return nil, fmt.Errorf("model.safetensors.index.json: %w", err)
	}
	seen := map[string]bool{}
	var out []string
	for _, f := range ix.WeightMap {
		if !seen[f] {
			if !validRepoPath(f) {
				return nil, fmt.Errorf("model.safetensors.index.json: bad shard path %q", f)
			}
			seen[f] = true
			out = append(out, f)
		}
	}
	return out, nil
}

// validRepoPath accepts slash-separated relative paths that stay inside the
// snapshot (the hub's file names come from the network).
func validRepoPath(p string) bool {
	return p != "" && fs.ValidPath(p) && !strings.Contains(p, `\`) && filepath.IsLocal(filepath.FromSlash(p))
}
