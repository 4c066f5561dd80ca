"""Backend fleets through the real binary (issue 19): `servers` at start and reload.

A host name that does not resolve when ficus starts is a warning when another server of
the backend has an address, and an error (the start is refused) when none has. Names
under the reserved .invalid domain (RFC 6761) never resolve.
"""

import subprocess
import unittest

from harness import FicusTestCase, ficus_bin, respond_with, sanitized, wait_until


class StartResolution(FicusTestCase):
    def test_unresolvable_server_is_a_warning_when_another_resolves(self):
        b = self.backend(respond_with(body=b"legacy"))
        f = self.ficus(start=False)
        f.config["backends"]["legacy"] = {
            "servers": [{"url": "http://nonexistent.invalid:8080", "weight": 2}, b.url]
        }
        f.start()
        r = f.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"legacy")
        warned = f.log_lines(
            r'level=warn .*backends\.legacy\.servers\[0\]: cannot resolve host "nonexistent\.invalid"'
        )
        self.assertEqual(len(warned), 1, f.stderr())

    def test_no_server_resolves_is_an_error(self):
        f = self.ficus(start=False)
        f.config["backends"]["legacy"] = {
            "servers": ["http://nonexistent.invalid", "http://also-nonexistent.invalid:81"]
        }
        f.write_config()
        proc = subprocess.run(
            [ficus_bin(), "-c", f.config_path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=60 if sanitized() else 30,
            text=True,
            env=f.env(),
        )
        self.assertEqual(proc.returncode, 1, proc.stderr)
        lines = proc.stderr.splitlines()
        for i, host in enumerate(["nonexistent.invalid", "also-nonexistent.invalid"]):
            prefix = '%s: backends.legacy.servers[%d]: cannot resolve host "%s": ' % (
                f.config_path, i, host)
            self.assertTrue(any(l.startswith(prefix) for l in lines), proc.stderr)
        self.assertNotIn("Sanitizer", proc.stderr)

        # A url backend names its url, as before.
        f.config["backends"]["legacy"] = {"url": "http://nonexistent.invalid"}
        f.write_config()
        proc = subprocess.run([ficus_bin(), "-c", f.config_path], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=60 if sanitized() else 30, text=True, env=f.env())
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn('%s: backends.legacy.url: cannot resolve host "nonexistent.invalid": '
                      % f.config_path, proc.stderr)

    def test_reload_keeps_running_config_when_no_server_resolves(self):
        b = self.backend(respond_with(body=b"legacy"))
        f = self.ficus(legacy=b, allow_errors=[r"reload rejected: .*cannot resolve host"])
        cfg = dict(f.config)
        cfg["backends"] = dict(cfg["backends"])
        cfg["backends"]["legacy"] = {"servers": ["http://nonexistent.invalid"]}
        f.reload(cfg)
        wait_until(lambda: f.log_lines(r'reload rejected: .*backends\.legacy\.servers\[0\]: '
                                       r'cannot resolve host "nonexistent\.invalid"'),
                   10, what="the refused reload")
        r = f.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(r.body, b"legacy")


if __name__ == "__main__":
    unittest.main()
