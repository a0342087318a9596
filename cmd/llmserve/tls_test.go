package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmserve/llmserve/internal/tlstest"
)

// The real server behind --ssl-certfile/--ssl-keyfile answers HTTPS; with
// --ssl-cert-reqs 2 a client without a certificate is refused and one with
// a certificate from --ssl-ca-certs is served. CORS is on by default, as vLLM's.
func TestLiveTLSAndCORS(t *testing.T) {
	sc := tlstest.New(t, "server", x509.ExtKeyUsageServerAuth)
	cc := tlstest.New(t, "client", x509.ExtKeyUsageClientAuth)
	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: sc.Pool, Certificates: certs}}}
	}
	withCert := client(cc.TLS)
	l := startLiveClient(t, withCert, "--ssl-keyfile", sc.KeyFile, "--ssl-certfile", sc.CertFile,
		"--ssl-ca-certs", cc.CertFile, "--ssl-cert-reqs", "2")
	if !strings.HasPrefix(l.url, "https://") {
		t.Fatal(l.url)
	}
	req, _ := http.NewRequest(http.MethodGet, l.url+"/health", nil)
	req.Header.Set("Origin", "https://ui.example")
	resp, err := withCert.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("%d tls=%v %v", resp.StatusCode, resp.TLS != nil, resp.Header)
	}
	if resp, err := client().Get(l.url + "/health"); err == nil {
		resp.Body.Close()
		t.Fatalf("a client without a certificate got %d", resp.StatusCode)
	}
	// Plain HTTP is not served on the HTTPS port.
	if resp, err := http.Get("http://" + strings.TrimPrefix(l.url, "https://") + "/health"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP served")
		}
	}
}

// A missing or invalid key or certificate fails start-up, before the model
// is resolved (the model named does not exist).
func TestTLSStartupErrors(t *testing.T) {
	sc := tlstest.New(t, "server", x509.ExtKeyUsageServerAuth)
	other := tlstest.New(t, "other", x509.ExtKeyUsageServerAuth)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--ssl-certfile", sc.CertFile, "--ssl-keyfile", "/nonexistent.key"}, "/nonexistent.key: no such file"},
		{[]string{"--ssl-certfile", "/nonexistent.crt", "--ssl-keyfile", sc.KeyFile}, "/nonexistent.crt: no such file"},
		{[]string{"--ssl-certfile", garbage, "--ssl-keyfile", sc.KeyFile}, "--ssl-certfile"},
		{[]string{"--ssl-certfile", sc.CertFile, "--ssl-keyfile", other.KeyFile}, "private key does not match"},
		{[]string{"--ssl-certfile", sc.CertFile}, "--ssl-certfile"}, // no key in the certificate file
		{[]string{"--ssl-certfile", sc.CertFile, "--ssl-keyfile", sc.KeyFile, "--ssl-ca-certs", garbage, "--ssl-cert-reqs", "2"}, "no PEM certificate"},
	} {
		cfg, err := parseFlags(append([]string{"serve", "no-such-model-dir"}, c.args...), noEnv, io.Discard)
		if err != nil {
			t.Fatalf("%q: %v", c.args, err)
		}
		err = serve(context.Background(), cfg, slog.New(slog.DiscardHandler), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.args, err, c.want)
		}
	}
	// A key and its certificate in one file (uvicorn accepts it).
	both := filepath.Join(t.TempDir(), "both.pem")
	crt, _ := os.ReadFile(sc.CertFile)
	key, _ := os.ReadFile(sc.KeyFile)
	if err := os.WriteFile(both, append(crt, key...), 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg, err := tlsConfig(&config{SSLCertFile: both}); err != nil || len(cfg.Certificates) != 1 || cfg.ClientAuth != tls.NoClientCert {
		t.Fatalf("%v %v", cfg, err)
	}
	for reqs, want := range map[int]tls.ClientAuthType{0: tls.NoClientCert, 1: tls.VerifyClientCertIfGiven, 2: tls.RequireAndVerifyClientCert} {
		cfg, err := tlsConfig(&config{SSLCertFile: sc.CertFile, SSLKeyFile: sc.KeyFile, SSLCACerts: sc.CertFile, SSLCertReqs: reqs})
		if err != nil || cfg.ClientAuth != want || cfg.ClientCAs == nil {
			t.Errorf("--ssl-cert-reqs %d: %v %v", reqs, cfg, err)
		}
	}
}
