package server_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/llmserve/llmserve/internal/tlstest"
	"github.com/llmserve/llmserve/server"
	"github.com/llmserve/llmserve/server/servertest"
)

// startTLS serves over Options.TLSConfig on loopback through Serve, with a
// connection limit (whose hooks see *tls.Conn).
func startTLS(t *testing.T, cfg *tls.Config) (*server.Server, string) {
	t.Helper()
	srv, err := server.New(server.Options{Engine: &servertest.Engine{}, Tokenizer: servertest.Tokenizer{},
		ModelNames: []string{model}, MaxModelLen: 128, VocabSize: servertest.VocabSize,
		MaxConnections: 8, TLSConfig: cfg})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := srv.NewHTTPServer()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(hs, ln) }()
	t.Cleanup(func() {
		hs.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return srv, "https://" + ln.Addr().String()
}

func tlsClient(roots *x509.CertPool, certs ...tls.Certificate) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs}}}
}

func TestServeTLS(t *testing.T) {
	sc := tlstest.New(t, "server", x509.ExtKeyUsageServerAuth)
	cc := tlstest.New(t, "client", x509.ExtKeyUsageClientAuth)
	for _, c := range []struct {
		name       string
		auth       tls.ClientAuthType
		clientCert bool
		ok         bool
	}{
		{"no client certs", tls.NoClientCert, false, true},
		{"optional, none sent", tls.VerifyClientCertIfGiven, false, true},
		{"optional, sent", tls.VerifyClientCertIfGiven, true, true},
		{"required, sent", tls.RequireAndVerifyClientCert, true, true},
		{"required, none sent", tls.RequireAndVerifyClientCert, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv, url := startTLS(t, &tls.Config{Certificates: []tls.Certificate{sc.TLS}, ClientAuth: c.auth, ClientCAs: cc.Pool})
			var certs []tls.Certificate
			if c.clientCert {
				certs = append(certs, cc.TLS)
			}
			client := tlsClient(sc.Pool, certs...)
			defer client.CloseIdleConnections()
			resp, err := client.Get(url + "/health")
			if !c.ok {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("a client without a certificate got %d", resp.StatusCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body) // so the connection is kept alive
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.TLS == nil || resp.ProtoMajor != 1 {
				t.Fatalf("%d %s tls=%v", resp.StatusCode, resp.Proto, resp.TLS != nil)
			}
			// The connection limit tracks TLS connections too: the
			// kept-alive one turns idle.
			for deadline := time.Now().Add(10 * time.Second); srv.ConnStats().Idle != 1; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%+v", srv.ConnStats())
				}
			}
		})
	}
	// A plain-HTTP client is not served.
	_, url := startTLS(t, &tls.Config{Certificates: []tls.Certificate{sc.TLS}})
	if resp, err := http.Get("http" + url[len("https"):] + "/health"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP served")
		}
	}
}
