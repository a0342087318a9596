package server_test

import (
	"strings"
	"testing"

	"github.com/llmserve/llmserve/server"
)

// CORS as vLLM's FastAPI app (Starlette's CORSMiddleware) does it:
// preflights are answered before auth (the server requires a key here), allowed origins get
// Access-Control-Allow-Origin on every response, errors included.
func TestCORS(t *testing.T) {
	star := []string{"*"}
	def := &server.CORSOptions{AllowedOrigins: star, AllowedMethods: star, AllowedHeaders: star}
	explicit := &server.CORSOptions{AllowedOrigins: []string{"https://a.example"}, AllowedMethods: star,
		AllowedHeaders: star, AllowCredentials: true}
	const a, evil = "https://a.example", "https://evil.example"
	preflight := func(origin, method, headers string) []string {
		h := []string{"Origin", origin, "Access-Control-Request-Method", method}
		if headers != "" {
			h = append(h, "Access-Control-Request-Headers", headers)
		}
		return h
	}
	for _, c := range []struct {
		name         string
		cors         *server.CORSOptions
		method, path string
		hdr          []string
		code         int
		want         map[string]string // header -> value ("" = absent)
		body         string            // substring of the body
	}{
		{"preflight default", def, "OPTIONS", "/v1/chat/completions", preflight(a, "POST", "authorization, content-type"), 200,
			map[string]string{"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT",
				"Access-Control-Allow-Headers": "authorization, content-type", "Access-Control-Max-Age": "600",
				"Access-Control-Allow-Credentials": ""}, "OK"},
		{"actual default", def, "GET", "/health", []string{"Origin", a}, 200,
			map[string]string{"Access-Control-Allow-Origin": "*", "Vary": ""}, ""},
		{"error keeps the headers", def, "POST", "/v1/completions", []string{"Origin", a}, 401,
			map[string]string{"Access-Control-Allow-Origin": "*"}, "API key"},
		{"cookie echoes the origin", def, "GET", "/health", []string{"Origin", a, "Cookie", "c=1"}, 200,
			map[string]string{"Access-Control-Allow-Origin": a, "Vary": "Origin"}, ""},
		{"no origin", def, "GET", "/health", nil, 200, map[string]string{"Access-Control-Allow-Origin": ""}, ""},
		{"OPTIONS without a request method is routed", def, "OPTIONS", "/health", []string{"Origin", a}, 405,
			map[string]string{"Access-Control-Allow-Origin": "*"}, ""},
		{"credentials echo", &server.CORSOptions{AllowedOrigins: star, AllowedMethods: star, AllowedHeaders: star, AllowCredentials: true},
			"GET", "/health", []string{"Origin", a}, 200,
			map[string]string{"Access-Control-Allow-Origin": a, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}, ""},
		{"explicit preflight", explicit, "OPTIONS", "/v1/completions", preflight(a, "POST", "Authorization"), 200,
			map[string]string{"Access-Control-Allow-Origin": a, "Access-Control-Allow-Credentials": "true", "Vary": "Origin",
				"Access-Control-Allow-Headers": "Authorization"}, "OK"},
		{"explicit preflight, other origin", explicit, "OPTIONS", "/v1/completions", preflight(evil, "POST", ""), 400,
			map[string]string{"Access-Control-Allow-Origin": ""}, "Disallowed CORS origin"},
		{"explicit actual", explicit, "GET", "/health", []string{"Origin", a}, 200,
			map[string]string{"Access-Control-Allow-Origin": a, "Access-Control-Allow-Credentials": "true"}, ""},
		{"explicit actual, other origin", explicit, "GET", "/health", []string{"Origin", evil}, 200,
			map[string]string{"Access-Control-Allow-Origin": "", "Access-Control-Allow-Credentials": ""}, ""},
		{"method not allowed", &server.CORSOptions{AllowedOrigins: star, AllowedMethods: []string{"get"}, AllowedHeaders: star},
			"OPTIONS", "/v1/completions", preflight(a, "POST", ""), 400,
			map[string]string{"Access-Control-Allow-Methods": "GET"}, "Disallowed CORS method"},
		{"header not allowed", &server.CORSOptions{AllowedOrigins: star, AllowedMethods: star, AllowedHeaders: []string{"X-Custom"}},
			"OPTIONS", "/v1/completions", preflight(a, "POST", "authorization"), 400,
			map[string]string{"Access-Control-Allow-Headers": "accept, accept-language, content-language, content-type, x-custom"},
			"Disallowed CORS headers"},
		{"header allowed", &server.CORSOptions{AllowedOrigins: star, AllowedMethods: star, AllowedHeaders: []string{"X-Custom"}},
			"OPTIONS", "/v1/completions", preflight(a, "POST", "X-Custom, content-type"), 200,
			map[string]string{"Access-Control-Allow-Origin": "*"}, "OK"},
		{"off", nil, "OPTIONS", "/health", preflight(a, "GET", ""), 405,
			map[string]string{"Access-Control-Allow-Origin": ""}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, nil, func(o *server.Options) { o.CORS, o.APIKey = c.cors, "k" })
			code, body, hdr := e.do(c.method, c.path, "", c.hdr...)
			if code != c.code || !strings.Contains(string(body), c.body) {
				t.Fatalf("%d %s, want %d with %q", code, body, c.code, c.body)
			}
			for k, v := range c.want {
				if got := strings.Join(hdr.Values(k), ", "); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
		})
	}
}
