package server

import (
	"net/http"
	"slices"
	"strings"
)

// CORSOptions are vLLM's --allowed-origins, --allowed-methods,
// --allowed-headers and --allow-credentials, applied as vLLM's FastAPI
// app applies them (Starlette's CORSMiddleware): preflights are answered
// here, before routing and auth, and responses to allowed origins carry
// Access-Control-Allow-Origin. "*" in a list allows any value.
type CORSOptions struct {
	AllowedOrigins   []string
	AllowedMethods   []string
	AllowedHeaders   []string
	AllowCredentials bool
}

// corsAllMethods is what "*" allows (Starlette's ALL_METHODS).
var corsAllMethods = []string{"DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"}

// corsSafelisted headers are always allowed (Starlette's SAFELISTED_HEADERS).
var corsSafelisted = []string{"accept", "accept-language", "content-language", "content-type"}

// corsMaxAge is Starlette's default Access-Control-Max-Age (seconds).
const corsMaxAge = "600"

type cors struct {
	allOrigins, allHeaders bool
	origins                []string
	methods                []string // upper case
	headers                []string // lower case, sorted, safelisted included
	credentials            bool
	allowMethods           string // the preflight's Access-Control-Allow-Methods
	allowHeaders           string // the preflight's Access-Control-Allow-Headers (not allHeaders)
}

func newCORS(o CORSOptions) *cors {
	c := &cors{credentials: o.AllowCredentials}
	c.allOrigins = slices.Contains(o.AllowedOrigins, "*")
	c.origins = o.AllowedOrigins
	if slices.Contains(o.AllowedMethods, "*") {
		c.methods = corsAllMethods
	} else {
		for _, m := range o.AllowedMethods {
			c.methods = append(c.methods, strings.ToUpper(m))
		}
	}
	c.allowMethods = strings.Join(c.methods, ", ")
	c.allHeaders = slices.Contains(o.AllowedHeaders, "*")
	c.headers = slices.Clone(corsSafelisted)
	for _, h := range o.AllowedHeaders {
		if h = strings.ToLower(strings.TrimSpace(h)); h != "" && !slices.Contains(c.headers, h) {
			c.headers = append(c.headers, h)
		}
	}
	slices.Sort(c.headers)
	c.allowHeaders = strings.Join(c.headers, ", ")
	return c
}

func (c *cors) originAllowed(origin string) bool {
	return c.allOrigins || slices.Contains(c.origins, origin)
}

// wrap answers preflights (OPTIONS with Origin and
// Access-Control-Request-Method) itself: 200 with the allow headers, or 400
// naming what is disallowed, as Starlette does; they never reach h. Other
// requests with an Origin get the response headers of an allowed origin.
// Requests without Origin pass untouched.
func (c *cors) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" {
			h.ServeHTTP(w, r)
			return
		}
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			c.preflight(w, r, origin)
			return
		}
		hd := w.Header()
		switch {
		case !c.originAllowed(origin):
		case c.allOrigins && !c.credentials && r.Header.Get("Cookie") == "":
			hd.Set("Access-Control-Allow-Origin", "*")
		default:
			// An explicit list, credentials, or a cookie: a browser
			// accepts only the origin itself.
			hd.Set("Access-Control-Allow-Origin", origin)
			hd.Add("Vary", "Origin")
		}
		if c.credentials && c.originAllowed(origin) {
			hd.Set("Access-Control-Allow-Credentials", "true")
		}
		h.ServeHTTP(w, r)
	})
}

func (c *cors) preflight(w http.ResponseWriter, r *http.Request, origin string) {
	hd := w.Header()
	var failures []string
	if !c.originAllowed(origin) {
		failures = append(failures, "origin")
	}
	if c.allOrigins && !c.credentials {
		hd.Set("Access-Control-Allow-Origin", "*")
	} else {
		hd.Set("Vary", "Origin")
		if c.originAllowed(origin) {
			hd.Set("Access-Control-Allow-Origin", origin)
		}
	}
	if !slices.Contains(c.methods, strings.ToUpper(r.Header.Get("Access-Control-Request-Method"))) {
		failures = append(failures, "method")
	}
	hd.Set("Access-Control-Allow-Methods", c.allowMethods)
	hd.Set("Access-Control-Max-Age", corsMaxAge)
	requested := r.Header.Values("Access-Control-Request-Headers")
	if c.allHeaders {
		if len(requested) > 0 {
			hd.Set("Access-Control-Allow-Headers", strings.Join(requested, ", "))
		}
	} else {
		hd.Set("Access-Control-Allow-Headers", c.allowHeaders)
		for _, v := range requested {
			for _, name := range strings.Split(v, ",") {
				name = strings.ToLower(strings.TrimSpace(name))
				if name != "" && !slices.Contains(c.headers, name) {
					failures = append(failures, "headers")
					break
				}
			}
		}
	}
	if c.credentials {
		hd.Set("Access-Control-Allow-Credentials", "true")
	}
	hd.Set("Content-Type", "text/plain; charset=utf-8")
	if len(failures) > 0 {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte("Disallowed CORS " + strings.Join(slices.Compact(failures), ", ")))
		return
	}
	_, _ = w.Write([]byte("OK"))
}
