package hub

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

const (
	maxAttempts   = 6 // per file, resuming each time
	firstBackoff  = 50 * time.Millisecond
	maxBackoff    = 5 * time.Second
	idleTimeout   = 60 * time.Second // a download stalled this long is retried
	parallelFiles = 4
)

// sibling is one file of the hub's model info (GET /api/models/{repo}/revision/{rev}?blobs=true).
type sibling struct {
	RFilename string `json:"rfilename"`
	Size      *int64 `json:"size"`
	BlobID    string `json:"blobId"` // git blob sha1
	LFS       *struct {
		SHA256 string `json:"sha256"`
		Size   int64  `json:"size"`
	} `json:"lfs"`
}

type modelInfo struct {
	ID       string    `json:"id"`
	SHA      string    `json:"sha"`
	Siblings []sibling `json:"siblings"`
}

// wantedFiles are fetched when the repo has them; weights are chosen separately.
var wantedFiles = []string{
	"config.json", "generation_config.json",
	"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
	"chat_template.jinja", "chat_template.json",
}

func (r *resolver) authorize(req *http.Request) {
	// Send the token to the endpoint only; Go drops it on cross-host redirects.
	if r.opts.Token != "" && strings.HasPrefix(req.URL.String(), r.opts.Endpoint+"/") {
		req.Header.Set("Authorization", "Bearer "+r.opts.Token)
	}
	req.Header.Set("User-Agent", "llmserve (huggingface_hub-compatible)")
}

func (r *resolver) modelInfo(ctx context.Context) (*modelInfo, error) {
	u := fmt.Sprintf("%s/api/models/%s/revision/%s?blobs=true", r.opts.Endpoint, r.repo, url.PathEscape(r.rev))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	r.authorize(req)
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("hub: listing %s at %s: %w", r.repo, r.opts.Endpoint, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, r.statusError(resp, "")
	}
	var info modelInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&info); err != nil {
		return nil, fmt.Errorf("hub: model info of %s: %w", r.repo, err)
	}
	if !commitRe.MatchString(info.SHA) {
		return nil, fmt.Errorf("hub: model info of %s has no commit hash (sha %q)", r.repo, info.SHA)
	}
	return &info, nil
}

// statusError maps a hub error response (X-Error-Code / X-Error-Message as
// huggingface_hub reads them) to a sentinel error with a useful message.
func (r *resolver) statusError(resp *http.Response, file string) error {
	code := resp.Header.Get("X-Error-Code")
	msg := resp.Header.Get("X-Error-Message")
	if msg == "" {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		msg = strings.TrimSpace(string(b))
	}
	what := r.repo
	if file != "" {
		what = r.repo + "/" + file
	}
	detail := fmt.Sprintf("%s (revision %s): HTTP %d", what, r.rev, resp.StatusCode)
	if msg != "" {
		detail += ": " + msg
	}
	tokenHint := "set HF_TOKEN to a token with access"
	if r.opts.Token != "" {
		tokenHint = "the HF_TOKEN given was refused or lacks access"
	}
	switch {
	case code == "GatedRepo":
		return fmt.Errorf("%w: %s: gated repository: accept its terms on the hub and %s", ErrAuth, detail, tokenHint)
	case code == "RevisionNotFound":
		return fmt.Errorf("%w: %s", ErrRevisionNotFound, detail)
	case code == "EntryNotFound":
		return fmt.Errorf("%w: %s", ErrEntryNotFound, detail)
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		// The hub answers 401 for private repos and for ones that do not exist.
		return fmt.Errorf("%w (%w): %s: the repository does not exist, or it is private or gated: %s", ErrRepoNotFound, ErrAuth, detail, tokenHint)
	case code == "RepoNotFound" || resp.StatusCode == http.StatusNotFound && file == "":
		return fmt.Errorf("%w: %s", ErrRepoNotFound, detail)
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w: %s", ErrEntryNotFound, detail)
	}
	return fmt.Errorf("hub: %s", detail)
}

// retryable reports whether an HTTP status may succeed later.
func retryable(status int) bool {
	return status == http.StatusTooManyRequests || status >= 500
}

// fileJob is one file to place in the snapshot.
type fileJob struct {
	name string
	size int64  // -1 if unknown
	blob string // blob file name: sha256 (LFS) or git sha1
	algo string // "sha256" or "gitsha1" or "" (unverifiable)
}

func jobFor(s sibling) fileJob {
	j := fileJob{name: s.RFilename, size: -1}
	if s.Size != nil {
		j.size = *s.Size
	}
	switch {
	case s.LFS != nil && len(s.LFS.SHA256) == 64:
		j.blob, j.algo, j.size = strings.ToLower(s.LFS.SHA256), "sha256", s.LFS.Size
	case len(s.BlobID) == 40:
		j.blob, j.algo = strings.ToLower(s.BlobID), "gitsha1"
	}
	return j
}

func (r *resolver) download(ctx context.Context) (string, error) {
	info, err := r.modelInfo(ctx)
	if err != nil {
		return "", err
	}
	commit := info.SHA
	snap := filepath.Join(r.repoDir, "snapshots", commit)
	// The ref may already point at a complete snapshot (e.g. the revision was a
	// tag first resolved through another name).
	if complete(snap, r.opts.SkipWeights) {
		return snap, r.writeRef(commit)
	}
	byName := map[string]sibling{}
	for _, s := range info.Siblings {
		byName[s.RFilename] = s
	}
	var jobs []fileJob
	for _, n := range wantedFiles {
		if s, ok := byName[n]; ok {
			jobs = append(jobs, jobFor(s))
		}
	}
	if _, ok := byName["config.json"]; !ok {
		return "", fmt.Errorf("%w: %s (revision %s) has no config.json", ErrEntryNotFound, r.repo, r.rev)
	}
	p := newProgress(r.opts.Progress, r.repo)
	defer p.stop()
	if !r.opts.SkipWeights {
		weights, err := r.weightFiles(ctx, byName, snap, commit, p)
		if err != nil {
			return "", err
		}
		jobs = append(jobs, weights...)
	}
	for _, j := range jobs {
		if !validRepoPath(j.name) {
			return "", fmt.Errorf("hub: %s lists a bad file name %q", r.repo, j.name)
		}
	}
	var total int64
	for _, j := range jobs {
		if j.size > 0 && !exists(filepath.Join(snap, filepath.FromSlash(j.name))) {
			total += j.size
		}
	}
	r.log.Info("hub: downloading", "repo", r.repo, "revision", r.rev, "commit", commit, "files", len(jobs), "bytes", total)
	p.start(total)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallelFiles)
	for _, j := range jobs {
		g.Go(func() error { return r.fetch(gctx, commit, snap, j, p) })
	}
	if err := g.Wait(); err != nil {
		return "", err
	}
	p.finish()
	if !complete(snap, r.opts.SkipWeights) {
		return "", fmt.Errorf("hub: %s: snapshot %s incomplete after download", r.repo, snap)
	}
	return snap, r.writeRef(commit)
}

// weightFiles picks the safetensors to fetch: the index and its shards, else
// model.safetensors, else every top-level *.safetensors. (Repos that ship
// both sharded and consolidated copies thus download one.)
func (r *resolver) weightFiles(ctx context.Context, byName map[string]sibling, snap, commit string, p *progress) ([]fileJob, error) {
	if s, ok := byName["model.safetensors.index.json"]; ok {
		j := jobFor(s)
		if err := r.fetch(ctx, commit, snap, j, p); err != nil {
			return nil, err
		}
		b, err := os.ReadFile(filepath.Join(snap, "model.safetensors.index.json"))
		if err != nil {
			return nil, fmt.Errorf("hub: %w", err)
		}
		shards, err := indexShards(b)
		if err != nil {
			return nil, fmt.Errorf("hub: %s: %w", r.repo, err)
		}
		jobs := []fileJob{j}
		for _, sh := range shards {
			s, ok := byName[sh]
			if !ok {
				return nil, fmt.Errorf("%w: %s: the index names shard %q, which the repository does not have", ErrEntryNotFound, r.repo, sh)
			}
			jobs = append(jobs, jobFor(s))
		}
		return jobs, nil
	}
	if s, ok := byName["model.safetensors"]; ok {
		return []fileJob{jobFor(s)}, nil
	}
	var jobs []fileJob
	for n, s := range byName {
		if strings.HasSuffix(n, ".safetensors") && !strings.Contains(n, "/") {
			jobs = append(jobs, jobFor(s))
		}
	}
	if len(jobs) == 0 {
		return nil, fmt.Errorf("%w: %s (revision %s); only safetensors checkpoints are supported", ErrNoWeights, r.repo, r.rev)
	}
	return jobs, nil
}

func (r *resolver) writeRef(commit string) error {
	if r.rev == commit {
		return nil
	}
	p := filepath.Join(r.repoDir, "refs", filepath.FromSlash(r.rev))
	if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == commit {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	if err := writeAtomic(p, []byte(commit)); err != nil {
		return fmt.Errorf("hub: writing ref: %w", err)
	}
	return nil
}

func writeAtomic(p string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), p)
}

func (r *resolver) resolveURL(commit, name string) string {
	parts := strings.Split(name, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return fmt.Sprintf("%s/%s/resolve/%s/%s", r.opts.Endpoint, r.repo, commit, strings.Join(parts, "/"))
}

// fetch places one file in the snapshot: an existing snapshot entry or blob is
// reused, else the blob is downloaded into blobs/<blob>.incomplete (resumed
// with Range requests), verified, renamed, and linked.
func (r *resolver) fetch(ctx context.Context, commit, snap string, j fileJob, p *progress) error {
	dst := filepath.Join(snap, filepath.FromSlash(j.name))
	if exists(dst) {
		return nil
	}
	u := r.resolveURL(commit, j.name)
	if j.blob == "" {
		// The listing lacked hashes (some mirrors): ask the file's headers.
		if err := r.headMeta(ctx, u, &j); err != nil {
			return err
		}
	}
	blobs := filepath.Join(r.repoDir, "blobs")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	blob := filepath.Join(blobs, j.blob)
	if !exists(blob) {
		// Locks live where huggingface_hub keeps them: <cache>/.locks/<repo folder>/.
		locks := filepath.Join(r.opts.CacheDir, ".locks", filepath.Base(r.repoDir))
		if err := os.MkdirAll(locks, 0o755); err != nil {
			return fmt.Errorf("hub: %w", err)
		}
		unlock, err := lockFile(ctx, filepath.Join(locks, j.blob+".lock"))
		if err != nil {
			return fmt.Errorf("hub: locking %s: %w", blob, err)
		}
		err = func() error {
			defer unlock()
			if exists(blob) { // another process finished it meanwhile
				return nil
			}
			return r.downloadBlob(ctx, u, blob, j, p)
		}()
		if err != nil {
			return err
		}
	} else if j.size > 0 {
		p.add(j.size) // counted in the total but already here
	}
	return link(blob, dst)
}

// headMeta fills j's blob name and size from a HEAD of the resolve URL:
// X-Linked-Etag / X-Linked-Size for LFS files (on the redirect, not followed),
// else ETag / Content-Length.
func (r *resolver) headMeta(ctx context.Context, u string, j *fileJob) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, u, nil)
	if err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	r.authorize(req)
	req.Header.Set("Accept-Encoding", "identity")
	c := *r.client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("hub: HEAD %s: %w", u, err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return r.statusError(resp, j.name)
	}
	etag := resp.Header.Get("X-Linked-Etag")
	if etag == "" {
		etag = resp.Header.Get("ETag")
	}
	etag = strings.Trim(strings.TrimPrefix(etag, "W/"), `"`)
	size := resp.Header.Get("X-Linked-Size")
	if size == "" {
		size = resp.Header.Get("Content-Length")
	}
	if n, err := strconv.ParseInt(size, 10, 64); err == nil && j.size < 0 {
		j.size = n
	}
	switch {
	case len(etag) == 64 && isHex(etag):
		j.blob, j.algo = strings.ToLower(etag), "sha256"
	case len(etag) == 40 && isHex(etag):
		j.blob, j.algo = strings.ToLower(etag), "gitsha1"
	case etag != "" && validRepoPath(etag) && !strings.Contains(etag, "/"):
		j.blob = etag // opaque: size-checked only
		r.log.Warn("hub: file has no verifiable hash; checking its size only", "repo", r.repo, "file", j.name, "etag", etag)
	default:
		return fmt.Errorf("hub: %s/%s has no usable ETag to verify it by", r.repo, j.name)
	}
	return nil
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

func newHasher(j fileJob) hash.Hash {
	switch j.algo {
	case "sha256":
		return sha256.New()
	case "gitsha1":
		return sha1.New()
	}
	return nil
}

// downloadBlob downloads u into blob (via blob.incomplete), retrying with
// Range requests after interruptions, and verifies it before the rename.
func (r *resolver) downloadBlob(ctx context.Context, u, blob string, j fileJob, p *progress) error {
	inc := blob + ".incomplete"
	f, err := os.OpenFile(inc, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && (j.size < 0 || st.Size() <= j.size) {
		p.add(st.Size()) // left by an earlier, interrupted run
	}
	var lastErr error
	backoff := firstBackoff
	for attempt := range maxAttempts {
		if attempt > 0 {
			r.log.Warn("hub: download interrupted; resuming", "repo", r.repo, "file", j.name, "attempt", attempt+1, "err", lastErr)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
		}
		done, err := r.attempt(ctx, u, f, j, p)
		if err == nil && done {
			break
		}
		if err != nil {
			var fatal *fatalError
			if errors.As(err, &fatal) {
				return fatal.err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			lastErr = err
		}
		if attempt == maxAttempts-1 {
			return fmt.Errorf("hub: downloading %s/%s failed after %d attempts: %w", r.repo, j.name, maxAttempts, lastErr)
		}
	}
	if err := r.verify(f, j); err != nil {
		// Never keep bad bytes: the next attempt starts from scratch.
		f.Close()
		os.Remove(inc)
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	if err := os.Rename(inc, blob); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	return nil
}

// fatalError stops the retry loop.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }

// attempt continues the download from the current length of f. done is true
// when f holds the whole file.
func (r *resolver) attempt(ctx context.Context, u string, f *os.File, j fileJob, p *progress) (done bool, err error) {
	st, err := f.Stat()
	if err != nil {
		return false, &fatalError{fmt.Errorf("hub: %w", err)}
	}
	have := st.Size()
	if j.size >= 0 && have > j.size {
		if err := f.Truncate(0); err != nil {
			return false, &fatalError{fmt.Errorf("hub: %w", err)}
		}
		have = 0
	}
	if j.size >= 0 && have == j.size {
		return true, nil
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodGet, u, nil)
	if err != nil {
		return false, &fatalError{fmt.Errorf("hub: %w", err)}
	}
	r.authorize(req)
	// Identity encoding: byte offsets must be those of the file itself.
	req.Header.Set("Accept-Encoding", "identity")
	if have > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		start, ok := contentRangeStart(resp.Header.Get("Content-Range"))
		if !ok || start != have {
			// Unusable range: start over.
			if err := f.Truncate(0); err != nil {
				return false, &fatalError{fmt.Errorf("hub: %w", err)}
			}
			p.add(-have)
			return false, fmt.Errorf("unexpected Content-Range %q for offset %d", resp.Header.Get("Content-Range"), have)
		}
		r.log.Debug("hub: resuming", "file", j.name, "offset", have)
	case resp.StatusCode == http.StatusOK:
		if have > 0 { // server ignored Range: start over
			if err := f.Truncate(0); err != nil {
				return false, &fatalError{fmt.Errorf("hub: %w", err)}
			}
			p.add(-have)
			have = 0
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		if err := f.Truncate(0); err != nil {
			return false, &fatalError{fmt.Errorf("hub: %w", err)}
		}
		p.add(-have)
		return false, fmt.Errorf("range not satisfiable at offset %d", have)
	case retryable(resp.StatusCode):
		return false, fmt.Errorf("HTTP %d", resp.StatusCode)
	default:
		return false, &fatalError{r.statusError(resp, j.name)}
	}
	if _, err := f.Seek(have, io.SeekStart); err != nil {
		return false, &fatalError{fmt.Errorf("hub: %w", err)}
	}
	// Cancel the request when no byte arrives for idleTimeout.
	idle := time.AfterFunc(idleTimeout, cancel)
	defer idle.Stop()
	buf := make([]byte, 256<<10)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			idle.Reset(idleTimeout)
			if _, err := f.Write(buf[:n]); err != nil {
				return false, &fatalError{fmt.Errorf("hub: writing %s: %w", f.Name(), err)}
			}
			have += int64(n)
			p.add(int64(n))
			if j.size >= 0 && have > j.size {
				return false, &fatalError{fmt.Errorf("%w: %s/%s: server sent more than the %d bytes listed", ErrChecksum, r.repo, j.name, j.size)}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return false, rerr
		}
	}
	if j.size >= 0 && have < j.size {
		return false, fmt.Errorf("body ended at %d of %d bytes", have, j.size)
	}
	return true, nil
}

// contentRangeStart parses "bytes START-END/SIZE".
func contentRangeStart(h string) (int64, bool) {
	s, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, false
	}
	s, _, ok = strings.Cut(s, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// verify checks f's size and hash: sha256 for LFS files, the git blob sha1
// ("blob <size>\x00" + content) for the others.
func (r *resolver) verify(f *os.File, j fileJob) error {
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	if j.size >= 0 && st.Size() != j.size {
		return fmt.Errorf("%w: %s/%s is %d bytes, the hub lists %d", ErrChecksum, r.repo, j.name, st.Size(), j.size)
	}
	h := newHasher(j)
	if h == nil {
		return nil
	}
	if j.algo == "gitsha1" {
		fmt.Fprintf(h, "blob %d\x00", st.Size())
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != j.blob {
		return fmt.Errorf("%w: %s/%s: %s %s, the hub lists %s; the file was discarded", ErrChecksum, r.repo, j.name, j.algo, got, j.blob)
	}
	return nil
}

// link makes dst a relative symlink to blob (as huggingface_hub does), or a
// hard link where symlinks are unavailable.
func link(blob, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	rel, err := filepath.Rel(filepath.Dir(dst), blob)
	if err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	os.Remove(dst) // a dangling link from an earlier, cleaned-up blob
	if err := os.Symlink(rel, dst); err != nil {
		if err2 := os.Link(blob, dst); err2 != nil {
			return fmt.Errorf("hub: linking %s: %w", dst, errors.Join(err, err2))
		}
	}
	return nil
}
