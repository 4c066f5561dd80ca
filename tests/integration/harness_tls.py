"""Certificates made at test time with the openssl command line (EC P-256 keys:
fast to make). Nothing here is checked in; every run makes its own.

Pki(dir) makes:
  root CA            ca.pem / ca.key           the CA clients and ficus trust
  intermediate CA    inter.pem / inter.key     signed by the root
  ficus listener     proxy.pem (leaf + intermediate, a chain) / proxy.key,
                     SANs localhost, proxy.test, 127.0.0.1
  backend            backend.pem / backend.key, signed by the root,
                     SANs backend.test, 127.0.0.1
  expired backend    expired.pem / expired.key (valid 2020-01-01 to 2020-02-01)
  another root CA    other-ca.pem / other-ca.key, and other.pem / other.key, a
                     listener certificate it signed (for the reload test)
"""

import os
import ssl
import subprocess

_CA_CNF = """
[ ca ]
default_ca = testca
[ testca ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = anything
copy_extensions = copy
unique_subject = no
[ anything ]
commonName = supplied
[ leaf ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
"""


def _run(args, cwd):
    p = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise AssertionError("openssl failed: %s\n%s" % (" ".join(args), p.stderr))


class Pki:
    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self._ca("ca", "ficus test root CA")
        self._ca("other-ca", "ficus other root CA")
        self._ca("inter", "ficus test intermediate CA", issuer="ca")
        self._leaf("proxy", "proxy.test", ["DNS:localhost", "DNS:proxy.test", "IP:127.0.0.1"],
                   issuer="inter")
        with open(self.path("proxy-leaf.pem")) as a, open(self.path("inter.pem")) as b:
            chain = a.read() + b.read()
        with open(self.path("proxy.pem"), "w") as f:
            f.write(chain)
        self._leaf("backend", "backend.test", ["DNS:backend.test", "IP:127.0.0.1"], issuer="ca")
        self._leaf("other", "proxy.test", ["DNS:localhost", "IP:127.0.0.1"], issuer="other-ca")
        self._expired("expired", "backend.test", ["DNS:backend.test", "IP:127.0.0.1"])

    def path(self, name):
        return os.path.join(self.dir, name)

    def _key(self, name):
        _run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-out", name + ".key"], self.dir)

    def _ca(self, name, cn, issuer=None):
        self._key(name)
        if issuer is None:
            _run(["openssl", "req", "-x509", "-new", "-key", name + ".key", "-subj", "/CN=" + cn,
                  "-days", "30", "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", name + ".pem"],
                 self.dir)
            return
        _run(["openssl", "req", "-new", "-key", name + ".key", "-subj", "/CN=" + cn,
              "-out", name + ".csr"], self.dir)
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:TRUE,pathlen:0\n"
                    "keyUsage=critical,keyCertSign,cRLSign\n")
        _run(["openssl", "x509", "-req", "-in", name + ".csr", "-CA", issuer + ".pem",
              "-CAkey", issuer + ".key", "-CAcreateserial", "-days", "30", "-extfile", ext,
              "-out", name + ".pem"], self.dir)

    def _leaf(self, name, cn, sans, issuer):
        self._key(name)
        _run(["openssl", "req", "-new", "-key", name + ".key", "-subj", "/CN=" + cn,
              "-out", name + ".csr"], self.dir)
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth\nsubjectAltName=%s\n" % ",".join(sans))
        out = name + ("-leaf.pem" if name == "proxy" else ".pem")
        _run(["openssl", "x509", "-req", "-in", name + ".csr", "-CA", issuer + ".pem",
              "-CAkey", issuer + ".key", "-CAcreateserial", "-days", "30", "-extfile", ext,
              "-out", out], self.dir)

    def _expired(self, name, cn, sans):
        """openssl 3.0's x509 cannot date a certificate in the past; `openssl ca` can."""
        self._key(name)
        _run(["openssl", "req", "-new", "-key", name + ".key", "-subj", "/CN=" + cn,
              "-addext", "subjectAltName=" + ",".join(sans), "-out", name + ".csr"], self.dir)
        with open(self.path("ca.cnf"), "w") as f:
            f.write(_CA_CNF.format(dir=self.dir))
        open(self.path("index.txt"), "w").close()
        with open(self.path("serial"), "w") as f:
            f.write("1000\n")
        _run(["openssl", "ca", "-batch", "-config", "ca.cnf", "-name", "testca",
              "-cert", "ca.pem", "-keyfile", "ca.key", "-in", name + ".csr",
              "-startdate", "20200101000000Z", "-enddate", "20200201000000Z",
              "-extensions", "leaf", "-notext", "-out", name + ".pem"], self.dir)

    # contexts -----------------------------------------------------------------------

    def server_context(self, cert="backend"):
        """A backend's server context (TLS 1.2 and up, tickets on)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.path(cert + ".pem"), self.path(cert + ".key"))
        return ctx

    def client_context(self, ca="ca", alpn=("http/1.1",)):
        """A client context trusting one root CA, verifying names."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.path(ca + ".pem"))
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx
