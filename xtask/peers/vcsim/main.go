// vcsim for the kit's peer tests: govmomi's vCenter simulator (Debian's
// golang-github-vmware-govmomi-dev, built in GOPATH mode by
// `cargo xtask deps`) on a loopback port with TLS. It prints the
// VDISK_* variables `vdisk` reads, then serves until stdin closes.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	model := simulator.VPX()
	if err := model.Create(); err != nil {
		fmt.Fprintln(os.Stderr, "vcsim:", err)
		os.Exit(1)
	}
	defer model.Remove()
	cert, err := loopbackCert()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vcsim:", err)
		os.Exit(1)
	}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	server := model.Service.NewServer()
	defer server.Close()

	sum := sha1.Sum(server.Certificate().Raw)
	hex := make([]string, len(sum))
	for i, b := range sum {
		hex[i] = fmt.Sprintf("%02X", b)
	}
	user := server.URL.User.Username()
	password, _ := server.URL.User.Password()
	fmt.Printf("VDISK_SERVER=%s\n", server.URL.Host)
	fmt.Printf("VDISK_USER=%s\n", user)
	fmt.Printf("VDISK_PASSWORD=%s\n", password)
	fmt.Printf("VDISK_THUMBPRINT=%s\n", strings.Join(hex, ":"))
	os.Stdout.Sync()
	io.Copy(io.Discard, os.Stdin)
}

// loopbackCert makes a self-signed P-256 certificate for 127.0.0.1 and
// ::1 (Go's built-in test certificate has a key rustls refuses).
func loopbackCert() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "vcsim"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
