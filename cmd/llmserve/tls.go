package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// tlsConfig is the HTTPS configuration of --ssl-certfile, --ssl-keyfile,
// --ssl-ca-certs and --ssl-cert-reqs (nil without --ssl-certfile). Like
// uvicorn's, the key may sit in the certificate file; --ssl-cert-reqs
// takes Python's ssl.CERT_NONE (0), CERT_OPTIONAL (1), CERT_REQUIRED (2).
func tlsConfig(c *config) (*tls.Config, error) {
	if c.SSLCertFile == "" {
		return nil, nil
	}
	keyFile := c.SSLKeyFile
	if keyFile == "" {
		keyFile = c.SSLCertFile
	}
	cert, err := tls.LoadX509KeyPair(c.SSLCertFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--ssl-certfile %s, --ssl-keyfile %s: %w", c.SSLCertFile, keyFile, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.SSLCACerts != "" {
		pem, err := os.ReadFile(c.SSLCACerts)
		if err != nil {
			return nil, fmt.Errorf("--ssl-ca-certs: %w", err)
		}
		cfg.ClientCAs = x509.NewCertPool()
		if !cfg.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ssl-ca-certs %s: no PEM certificate in it", c.SSLCACerts)
		}
	}
	switch c.SSLCertReqs {
	case 0:
		cfg.ClientAuth = tls.NoClientCert
	case 1:
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	case 2:
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	default:
		return nil, fmt.Errorf("--ssl-cert-reqs %d: want 0, 1 or 2", c.SSLCertReqs)
	}
	return cfg, nil
}
