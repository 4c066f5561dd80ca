"""`ficus check` and the command line around it, driven through the real binary.

Environment: FICUS_BIN is the ficus binary, FICUS_SOURCE_DIR the source tree
(both set by CTest). Python standard library only.
"""

import glob
import json
import os
import subprocess
import tempfile
import unittest

FICUS_BIN = os.environ.get("FICUS_BIN")
SOURCE_DIR = os.environ.get(
    "FICUS_SOURCE_DIR",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")),
)
TIMEOUT = 30  # seconds; check never waits on the network, so this is a hang

VALID = {
    "listen": "127.0.0.1:8080",
    "backends": {
        "legacy": {"url": "http://127.0.0.1:9001"},
        "new": {"url": "http://127.0.0.1:9002"},
    },
    "routes": [{"name": "all"}],
}


def ficus(*args, cwd=None):
    """Runs ficus with args; returns (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [FICUS_BIN, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=TIMEOUT,
        text=True,
    )
    # A sanitizer report is a failure whatever the exit code says.
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        if marker in proc.stderr:
            raise AssertionError(f"sanitizer report from ficus {args}:\n{proc.stderr}")
    return proc.returncode, proc.stdout, proc.stderr


@unittest.skipUnless(FICUS_BIN, "FICUS_BIN is not set")
class CheckTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="ficus-check-")
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, name, content):
        """Writes content (a dict is dumped as JSON) to a file in the temp dir."""
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content if isinstance(content, str) else json.dumps(content, indent=2))
        return path

    def check_lines(self, path):
        """Runs `ficus check -c path` expecting failure; returns every output line."""
        code, out, err = ficus("check", "-c", path, cwd=self.dir)
        self.assertEqual(code, 1, f"stdout:\n{out}\nstderr:\n{err}")
        return [line for line in (out + err).splitlines() if line.strip()]

    def test_shipped_configs_are_valid(self):
        files = sorted(glob.glob(os.path.join(SOURCE_DIR, "config", "*.json")))
        self.assertGreaterEqual(len(files), 2, "config/ has the example and the minimal file")
        for path in files:
            with self.subTest(path=os.path.basename(path)):
                code, out, err = ficus("check", "-c", path, cwd=self.dir)
                self.assertEqual(code, 0, f"stdout:\n{out}\nstderr:\n{err}")
                self.assertIn("ok", out.split(), out)

    def test_valid_file(self):
        path = self.write("good.json", VALID)
        code, out, err = ficus("check", "-c", path, cwd=self.dir)
        self.assertEqual(code, 0, err)
        self.assertIn("ok", out.split())

    def test_broken_file_names_file_location_and_reason(self):
        cfg = json.loads(json.dumps(VALID))
        cfg["routes"] = [{"name": "a"}, {"name": "b", "new_percent": 101}]
        path = self.write("bad.json", cfg)
        lines = self.check_lines(path)
        self.assertIn(f"{path}: routes[1].new_percent: must be a number from 0 to 100", lines)

    def test_every_error_is_reported(self):
        cfg = json.loads(json.dumps(VALID))
        cfg["listen"] = "127.0.0.1:0"
        cfg["workers"] = -1
        cfg["backends"]["legacy"]["url"] = "ftp://x"
        cfg["routes"] = [{"name": "r", "new": "nw", "fallback": ["5xx", "5xx"]}]
        path = self.write("many.json", cfg)
        lines = self.check_lines(path)
        for want in (
            "listen: port must be a number from 1 to 65535",
            "workers: must be an integer from 0 to 256",
            "backends.legacy.url: must start with http:// or https://",
            'routes[0].new: no backend named "nw"',
            'routes[0].fallback[1]: "5xx" is listed twice',
        ):
            self.assertIn(f"{path}: {want}", lines)
        self.assertEqual(len([line for line in lines if line.startswith(path)]), 5, lines)

    def test_unknown_key(self):
        cfg = json.loads(json.dumps(VALID))
        cfg["routes"][0]["shadow"] = {"percnt": 5}
        cfg["wrkers"] = 2
        path = self.write("typo.json", cfg)
        lines = self.check_lines(path)
        self.assertIn(f"{path}: routes[0].shadow.percnt: unknown key", lines)
        self.assertIn(f"{path}: wrkers: unknown key", lines)

    def test_syntax_error_has_line_and_column(self):
        path = self.write("syntax.json", '{\n  "listen": "127.0.0.1:8080",\n  oops\n}\n')
        lines = self.check_lines(path)
        self.assertTrue(
            any(line.startswith(f"{path}: line 3, column ") for line in lines), lines
        )

    def test_state_store_etcd(self):
        """state_store (issue 13): ficus check reads it like everything else and loads its
        TLS files (a CA, a client certificate and key) the way it loads a backend's."""
        from harness_tls import Pki

        cfg = json.loads(json.dumps(VALID))
        cfg["state_store"] = {"type": "etcd", "endpoints": ["http://127.0.0.1:2379"],
                              "prefix": "/ficus/test/", "timeout_ms": 2000, "lease_ttl_s": 5}
        code, out, err = ficus("check", "-c", self.write("etcd.json", cfg), cwd=self.dir)
        self.assertEqual(code, 0, err)
        self.assertIn("ok", out.split())

        pki = Pki(os.path.join(self.dir, "pki"))
        store = {"type": "etcd", "endpoints": ["https://127.0.0.1:2379", "https://127.0.0.1:2380"],
                 "prefix": "/ficus/test/",
                 "tls": {"ca_file": pki.path("ca.pem"), "cert_file": pki.path("backend.pem"),
                         "key_file": pki.path("backend.key"), "server_name": "backend.test"}}
        cfg["state_store"] = store
        code, out, err = ficus("check", "-c", self.write("etcd-tls.json", cfg), cwd=self.dir)
        self.assertEqual(code, 0, err)

        store["tls"]["key_file"] = pki.path("proxy.key")
        store["tls"]["ca_file"] = os.path.join(self.dir, "nope.pem")
        path = self.write("etcd-bad-tls.json", cfg)
        lines = self.check_lines(path)
        self.assertIn(f'{path}: state_store.tls.ca_file: cannot read "{self.dir}/nope.pem": '
                      "No such file or directory", lines)
        store["tls"]["ca_file"] = pki.path("ca.pem")
        lines = self.check_lines(self.write("etcd-bad-tls.json", cfg))
        self.assertIn(f'{path}: state_store.tls.key_file: the key "{pki.path("proxy.key")}" does '
                      f'not match the certificate "{pki.path("backend.pem")}"', lines)

        # Config errors of the store come with the others, one line each.
        cfg["state_store"] = {"type": "etcd", "endpoints": ["http://127.0.0.1"], "prefix": "p"}
        cfg["workers"] = -1
        path = self.write("etcd-bad.json", cfg)
        lines = self.check_lines(path)
        for want in ('state_store.endpoints[0]: must name the port, as in "http://127.0.0.1:2379"',
                     'state_store.prefix: must start and end with "/" and name a directory, as in '
                     '"/ficus/prod/"',
                     "workers: must be an integer from 0 to 256"):
            self.assertIn(f"{path}: {want}", lines)

    def test_missing_file(self):
        path = os.path.join(self.dir, "nope.json")
        code, out, err = ficus("check", "-c", path, cwd=self.dir)
        self.assertEqual(code, 1)
        self.assertIn(path, out + err)
        self.assertIn("No such file or directory", out + err)

    def test_default_file_is_ficus_json(self):
        self.write("ficus.json", VALID)
        code, out, err = ficus("check", cwd=self.dir)
        self.assertEqual(code, 0, err)
        self.assertIn("ok", out.split())

    def test_bad_usage_exits_2(self):
        for args in (["--no-such-option"], ["frobnicate"], ["check", "--no-such-option"]):
            with self.subTest(args=args):
                code, out, err = ficus(*args, cwd=self.dir)
                self.assertEqual(code, 2, f"stdout:\n{out}\nstderr:\n{err}")
                self.assertTrue((out + err).strip(), "bad usage says what is wrong")

    def test_version(self):
        code, out, err = ficus("--version")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith("ficus "), out)

    def test_help(self):
        code, out, err = ficus("--help")
        self.assertEqual(code, 0, err)
        self.assertIn("check", out)


if __name__ == "__main__":
    unittest.main()
