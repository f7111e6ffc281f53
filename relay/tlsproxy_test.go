package relay_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// testPKI is a CA, a broker certificate and a client certificate it
// signed, and a CA that signed nothing here, as PEM files in a temporary
// directory.
type testPKI struct {
	ca       *x509.CertPool
	server   tls.Certificate
	caFile   string // the CA that signed both certificates
	otherCA  string // a CA that signed neither
	certFile string // client certificate
	keyFile  string // its key
}

// serverName is the one name the broker's certificate holds.
const serverName = "broker.outbox-relay.test"

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caCert, caKey := newCert(t, "outbox-relay test CA", nil, nil, func(c *x509.Certificate) {
		c.IsCA, c.BasicConstraintsValid, c.KeyUsage = true, true, x509.KeyUsageCertSign
	})
	other, _ := newCert(t, "outbox-relay other CA", nil, nil, func(c *x509.Certificate) {
		c.IsCA, c.BasicConstraintsValid, c.KeyUsage = true, true, x509.KeyUsageCertSign
	})
	srvCert, srvKey := newCert(t, serverName, caCert, caKey, func(c *x509.Certificate) {
		c.DNSNames, c.ExtKeyUsage = []string{serverName}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	})
	cliCert, cliKey := newCert(t, "outbox-relay", caCert, caKey, func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
	p := &testPKI{
		ca:       x509.NewCertPool(),
		caFile:   writePEM(t, dir, "ca.pem", "CERTIFICATE", caCert.Raw),
		otherCA:  writePEM(t, dir, "other-ca.pem", "CERTIFICATE", other.Raw),
		certFile: writePEM(t, dir, "client.pem", "CERTIFICATE", cliCert.Raw),
		keyFile:  writePEM(t, dir, "client-key.pem", "PRIVATE KEY", marshalKey(t, cliKey)),
		server:   tls.Certificate{Certificate: [][]byte{srvCert.Raw}, PrivateKey: srvKey},
	}
	p.ca.AddCert(caCert)
	return p
}

// newCert makes a certificate for cn signed by parent (self-signed when
// parent is nil), shaped by edit.
func newCert(t *testing.T, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, edit func(*x509.Certificate)) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	edit(tmpl)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func marshalKey(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	b, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writePEM(t *testing.T, dir, name, kind string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// tlsProxy terminates TLS as a broker's TLS listener that verifies peers
// would: it requires a client certificate signed by the test CA. It then
// forwards the connection in clear to the broker, reading the client's
// Connection.StartOk on the way to record the SASL mechanism the client
// chose. With advertiseExternal it adds EXTERNAL to the mechanisms the
// broker's Connection.Start offers, as a broker with the
// rabbitmq_auth_mechanism_ssl plugin does.
type tlsProxy struct {
	addr              string
	target            string
	advertiseExternal bool

	ln         net.Listener
	wg         sync.WaitGroup
	mu         sync.Mutex
	conns      []net.Conn
	refused    []error  // failed handshakes
	mechanisms []string // chosen in Connection.StartOk, one per connection
}

// startTLSProxy listens on a loopback port until the test ends.
func startTLSProxy(t *testing.T, pki *testPKI, target string, advertiseExternal bool) *tlsProxy {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pki.server},
		ClientCAs:    pki.ca,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	p := &tlsProxy{addr: ln.Addr().String(), target: target, advertiseExternal: advertiseExternal, ln: ln}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *tlsProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns = append(p.conns, c)
		p.mu.Unlock()
		p.wg.Add(1)
		go p.serve(c.(*tls.Conn))
	}
}

func (p *tlsProxy) serve(c *tls.Conn) {
	defer p.wg.Done()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		p.mu.Lock()
		p.refused = append(p.refused, err)
		p.mu.Unlock()
		// Close politely: with TLS 1.3 the client sends its AMQP header
		// before it reads the alert, and closing with that header unread
		// would reset the connection and lose the alert.
		if tc, ok := c.NetConn().(*net.TCPConn); ok {
			_ = tc.CloseWrite()
			_, _ = io.Copy(io.Discard, tc)
		}
		return
	}
	_ = c.SetDeadline(time.Time{})
	b, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, b)
	p.mu.Unlock()
	defer b.Close()
	done := make(chan struct{}, 2)
	go func() { p.clientToBroker(c, b); _ = b.Close(); done <- struct{}{} }()
	go func() { p.brokerToClient(b, c); _ = c.Close(); done <- struct{}{} }()
	<-done
	<-done
}

// clientToBroker forwards the protocol header and the frames up to
// Connection.StartOk one by one, recording the mechanism, then the rest.
func (p *tlsProxy) clientToBroker(c, b net.Conn) {
	header := make([]byte, 8)
	if _, err := io.ReadFull(c, header); err != nil {
		return
	}
	if _, err := b.Write(header); err != nil {
		return
	}
	for {
		f, err := readFrame(c)
		if err != nil {
			return
		}
		if _, err := b.Write(f.raw()); err != nil {
			return
		}
		if mech, ok := f.startOkMechanism(); ok {
			p.mu.Lock()
			p.mechanisms = append(p.mechanisms, mech)
			p.mu.Unlock()
			break
		}
	}
	_, _ = io.Copy(b, c)
}

// brokerToClient forwards the broker's frames, with EXTERNAL added to
// Connection.Start's mechanisms when the proxy advertises it.
func (p *tlsProxy) brokerToClient(b, c net.Conn) {
	if p.advertiseExternal {
		f, err := readFrame(b)
		if err != nil {
			return
		}
		f.addMechanism("EXTERNAL")
		if _, err := c.Write(f.raw()); err != nil {
			return
		}
	}
	_, _ = io.Copy(c, b)
}

func (p *tlsProxy) seen() (refused []error, mechanisms []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]error(nil), p.refused...), append([]string(nil), p.mechanisms...)
}

// frame is an AMQP 0-9-1 frame: type, channel, payload (the size and the
// frame-end octet are implied).
type frame struct {
	typ     byte
	channel uint16
	payload []byte
}

func readFrame(r io.Reader) (frame, error) {
	h := make([]byte, 7)
	if _, err := io.ReadFull(r, h); err != nil {
		return frame{}, err
	}
	body := make([]byte, binary.BigEndian.Uint32(h[3:])+1)
	if _, err := io.ReadFull(r, body); err != nil {
		return frame{}, err
	}
	if body[len(body)-1] != 0xCE {
		return frame{}, errors.New("no frame-end octet")
	}
	return frame{typ: h[0], channel: binary.BigEndian.Uint16(h[1:]), payload: body[:len(body)-1]}, nil
}

func (f frame) raw() []byte {
	b := make([]byte, 7, 8+len(f.payload))
	b[0] = f.typ
	binary.BigEndian.PutUint16(b[1:], f.channel)
	binary.BigEndian.PutUint32(b[3:], uint32(len(f.payload)))
	return append(append(b, f.payload...), 0xCE)
}

// method returns the class and method ids of a method frame.
func (f frame) method() (class, method uint16) {
	if f.typ != 1 || len(f.payload) < 4 {
		return 0, 0
	}
	return binary.BigEndian.Uint16(f.payload), binary.BigEndian.Uint16(f.payload[2:])
}

// startOkMechanism reads the mechanism of a Connection.StartOk (class 10,
// method 11): the client-properties table, then the mechanism shortstr.
func (f frame) startOkMechanism() (string, bool) {
	if c, m := f.method(); c != 10 || m != 11 {
		return "", false
	}
	p := f.payload[4:]
	if len(p) < 4 {
		return "", false
	}
	p = p[4+binary.BigEndian.Uint32(p):]
	if len(p) < 1 || len(p) < 1+int(p[0]) {
		return "", false
	}
	return string(p[1 : 1+p[0]]), true
}

// addMechanism adds mech to a Connection.Start (class 10, method 10):
// version octets, server-properties table, then the mechanisms longstr.
func (f *frame) addMechanism(mech string) {
	if c, m := f.method(); c != 10 || m != 10 {
		return
	}
	at := 4 + 2
	at += 4 + int(binary.BigEndian.Uint32(f.payload[at:]))
	n := int(binary.BigEndian.Uint32(f.payload[at:]))
	mechs := append([]byte(mech+" "), f.payload[at+4:at+4+n]...)
	var p bytes.Buffer
	p.Write(f.payload[:at])
	_ = binary.Write(&p, binary.BigEndian, uint32(len(mechs)))
	p.Write(mechs)
	p.Write(f.payload[at+4+n:])
	f.payload = p.Bytes()
}
