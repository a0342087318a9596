package hub

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeHub imitates the Hugging Face hub's API and file endpoints:
//
//	GET  /api/models/{org}/{name}/revision/{rev}?blobs=true -> {id, sha, siblings[{rfilename,size,blobId,lfs{sha256,size,pointerSize}}]}
//	HEAD/GET /{org}/{name}/resolve/{rev}/{file}: X-Repo-Commit; LFS files redirect (302)
//	  to a CDN URL with X-Linked-Etag / X-Linked-Size, others answer 200 with ETag (git sha1)
//	GET  /cdn/{sha256}: the LFS content, Range supported
//
// Errors carry X-Error-Code / X-Error-Message as the hub does.
type fakeHub struct {
	t     *testing.T
	srv   *httptest.Server
	token string // required for private repos

	mu       sync.Mutex
	repos    map[string]*fakeRepo
	requests []fakeRequest
	cutOnce  map[string]int  // file name -> bytes after which the next full GET is cut
	corrupt  map[string]bool // file name -> serve a flipped byte
	noHashes bool            // listing without blobId/lfs (as some mirrors answer)
}

type fakeRequest struct {
	Method, Path, Range, Auth string
}

type fakeRepo struct {
	id, commit string
	private    bool
	gated      bool
	files      map[string]*fakeFile
}

type fakeFile struct {
	name string
	data []byte
	lfs  bool
}

func (f *fakeFile) sha256() string {
	s := sha256.Sum256(f.data)
	return hex.EncodeToString(s[:])
}

func (f *fakeFile) gitSHA1() string {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(f.data))
	h.Write(f.data)
	return hex.EncodeToString(h.Sum(nil))
}

func newFakeHub(t *testing.T) *fakeHub {
	h := &fakeHub{t: t, repos: map[string]*fakeRepo{}, cutOnce: map[string]int{}, corrupt: map[string]bool{}}
	// Two muxes: the API and resolve patterns overlap in ServeMux's eyes.
	api := http.NewServeMux()
	api.HandleFunc("GET /api/models/{org}/{name}/revision/{rev}", h.api)
	api.HandleFunc("GET /cdn/{repo}/{sha}", h.cdn)
	files := http.NewServeMux()
	files.HandleFunc("/{org}/{name}/resolve/{rev}/{file...}", h.resolve)
	mux := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/") || strings.HasPrefix(r.URL.Path, "/cdn/") {
			api.ServeHTTP(w, r)
			return
		}
		files.ServeHTTP(w, r)
	})
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.requests = append(h.requests, fakeRequest{r.Method, r.URL.Path, r.Header.Get("Range"), r.Header.Get("Authorization")})
		h.mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *fakeHub) addRepo(id string, files ...*fakeFile) *fakeRepo {
	c := sha1.Sum([]byte(id))
	r := &fakeRepo{id: id, commit: hex.EncodeToString(c[:]), files: map[string]*fakeFile{}}
	for _, f := range files {
		r.files[f.name] = f
	}
	h.mu.Lock()
	h.repos[id] = r
	h.mu.Unlock()
	return r
}

func (h *fakeHub) reqs() []fakeRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]fakeRequest(nil), h.requests...)
}

// setCorrupt and setCut lock: handlers of cancelled requests may still run.
func (h *fakeHub) setCorrupt(name string, on bool) {
	h.mu.Lock()
	h.corrupt[name] = on
	h.mu.Unlock()
}

func (h *fakeHub) setCut(name string, after int) {
	h.mu.Lock()
	h.cutOnce[name] = after
	h.mu.Unlock()
}

func (h *fakeHub) reset() {
	h.mu.Lock()
	h.requests = nil
	h.mu.Unlock()
}

func hubError(w http.ResponseWriter, status int, code, msg string) {
	if code != "" {
		w.Header().Set("X-Error-Code", code)
	}
	w.Header().Set("X-Error-Message", msg)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// lookup applies the hub's access rules; it writes the error and returns nil
// when the request must fail.
func (h *fakeHub) lookup(w http.ResponseWriter, r *http.Request, file bool) *fakeRepo {
	h.mu.Lock()
	repo := h.repos[r.PathValue("org")+"/"+r.PathValue("name")]
	h.mu.Unlock()
	auth := r.Header.Get("Authorization")
	authed := h.token != "" && auth == "Bearer "+h.token
	if repo == nil || repo.private && !authed {
		if auth == "" || repo != nil {
			// Unauthenticated (or not allowed): 401 whether or not the repo exists.
			hubError(w, http.StatusUnauthorized, "RepoNotFound", "Repository Not Found for url: "+r.URL.String()+". Please make sure you specified the correct `repo_id` and `repo_type`. If you are trying to access a private or gated repo, make sure you are authenticated.")
			return nil
		}
		hubError(w, http.StatusNotFound, "RepoNotFound", "Repository not found")
		return nil
	}
	if file && repo.gated && !authed {
		hubError(w, http.StatusUnauthorized, "GatedRepo", "Access to model "+repo.id+" is restricted. You must have access to it and be authenticated to access it.")
		return nil
	}
	if rev := r.PathValue("rev"); rev != "main" && rev != repo.commit {
		hubError(w, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rev)
		return nil
	}
	return repo
}

func (h *fakeHub) api(w http.ResponseWriter, r *http.Request) {
	repo := h.lookup(w, r, false)
	if repo == nil {
		return
	}
	type lfs struct {
		SHA256      string `json:"sha256"`
		Size        int    `json:"size"`
		PointerSize int    `json:"pointerSize"`
	}
	type sib struct {
		RFilename string `json:"rfilename"`
		Size      *int   `json:"size,omitempty"`
		BlobID    string `json:"blobId,omitempty"`
		LFS       *lfs   `json:"lfs,omitempty"`
	}
	var sibs []sib
	for _, f := range repo.files {
		s := sib{RFilename: f.name}
		if !h.noHashes {
			n := len(f.data)
			s.Size = &n
			s.BlobID = f.gitSHA1()
			if f.lfs {
				s.BlobID = "0123456789abcdef0123456789abcdef01234567" // pointer file's blob, not the content's
				s.LFS = &lfs{SHA256: f.sha256(), Size: len(f.data), PointerSize: 134}
			}
		}
		sibs = append(sibs, s)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"_id": "abc", "id": repo.id, "modelId": repo.id, "sha": repo.commit,
		"private": repo.private, "gated": repo.gated, "siblings": sibs,
	})
}

func (h *fakeHub) resolve(w http.ResponseWriter, r *http.Request) {
	repo := h.lookup(w, r, true)
	if repo == nil {
		return
	}
	f := repo.files[r.PathValue("file")]
	if f == nil {
		hubError(w, http.StatusNotFound, "EntryNotFound", "Entry not found")
		return
	}
	w.Header().Set("X-Repo-Commit", repo.commit)
	if f.lfs {
		w.Header().Set("X-Linked-Etag", `"`+f.sha256()+`"`)
		w.Header().Set("X-Linked-Size", strconv.Itoa(len(f.data)))
		w.Header().Set("ETag", `"`+f.gitSHA1()+`"`)
		http.Redirect(w, r, "/cdn/"+strings.ReplaceAll(repo.id, "/", "--")+"/"+f.sha256()+"?file="+f.name, http.StatusFound)
		return
	}
	w.Header().Set("ETag", `"`+f.gitSHA1()+`"`)
	h.serve(w, r, f)
}

func (h *fakeHub) cdn(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	repo := h.repos[strings.ReplaceAll(r.PathValue("repo"), "--", "/")]
	h.mu.Unlock()
	var f *fakeFile
	if repo != nil {
		f = repo.files[r.URL.Query().Get("file")]
	}
	if f == nil || f.sha256() != r.PathValue("sha") {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("ETag", `"`+f.sha256()+`"`)
	h.serve(w, r, f)
}

// serve sends f's bytes (with Range support), applying injected faults.
func (h *fakeHub) serve(w http.ResponseWriter, r *http.Request, f *fakeFile) {
	data := f.data
	h.mu.Lock()
	if h.corrupt[f.name] {
		data = append([]byte(nil), data...)
		data[len(data)/3] ^= 0x5a
	}
	cut, doCut := h.cutOnce[f.name]
	if doCut && r.Method == http.MethodGet {
		delete(h.cutOnce, f.name)
	}
	h.mu.Unlock()
	if doCut && r.Method == http.MethodGet {
		// Promise the whole body, send part of it, drop the connection.
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Header().Set("Accept-Ranges", "bytes")
		w.WriteHeader(http.StatusOK)
		w.Write(data[:cut])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	http.ServeContent(w, r, f.name, time.Time{}, strings.NewReader(string(data)))
}

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
