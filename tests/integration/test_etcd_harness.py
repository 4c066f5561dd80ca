"""The etcd harness itself, proven before the fleet tests rely on it: a single node
and a three-node cluster of real etcd processes on loopback, leader kill and
re-election, restart on the same data, etcdctl helpers, and a close that leaves
no process, port or data dir behind."""

import os
import socket
import time
import unittest

from harness import make_workdir
from harness_etcd import (EtcdCluster, EtcdError, EtcdTestCase, b64, prefix_end, start_etcd,
                          unb64)


def port_closed(port):
    s = socket.socket()
    s.settimeout(1)
    try:
        return s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        s.close()


class SingleNode(EtcdTestCase):
    def test_put_get_history_compaction(self):
        c = self.etcd()
        self.assertEqual(len(c.running()), 1)
        r1 = c.put("/t/routes/a", {"step": 1})
        r2 = c.put("/t/routes/a", {"step": 2})
        c.put("/t/other", "x")
        r3 = c.put("/t/routes/a", "-3 starts with a dash\nand has two lines")
        self.assertLess(r1, r2)
        self.assertEqual(c.get("/t/routes/a"), b"-3 starts with a dash\nand has two lines")
        self.assertEqual(c.get_json("/t/routes/a", revision=r2), {"step": 2})
        self.assertIsNone(c.get("/t/none"))
        self.assertEqual([rev for rev, _ in c.history("/t/routes/a")], [r1, r2, r3])
        self.assertEqual(c.history("/t/routes/a")[0][1], b'{"step": 1}')
        self.assertEqual(c.revision(), r3)
        self.assertEqual(sorted(kv["key"] for kv in c.get_kv("/t/", prefix=True)),
                         ["/t/other", "/t/routes/a"])
        c.compact(r2)
        with self.assertRaisesRegex(AssertionError, "compacted"):
            c.history("/t/routes/a")

    def test_gateway_and_lease(self):
        c = self.etcd()
        m = c.members[0]
        lease = c.grant(5)
        c.put("/t/instances/i1", "alive", lease=lease)
        kvs = c.get_kv("/t/instances/i1")
        self.assertEqual(kvs[0]["lease"], lease)
        got = m.post("/v3/kv/range", {"key": b64("/t/"), "range_end": b64(prefix_end("/t/"))})
        self.assertEqual([unb64(kv["key"]) for kv in got["kvs"]], [b"/t/instances/i1"])
        m.post("/v3/lease/revoke", {"ID": str(lease)})
        self.assertIsNone(c.get("/t/instances/i1"))
        with self.assertRaises(EtcdError) as e:
            m.post("/v3/lease/revoke", {"ID": str(lease)})
        self.assertEqual((e.exception.status, e.exception.code), (404, 5))

    def test_restart_keeps_data_and_freeze(self):
        c = self.etcd()
        m = c.members[0]
        c.put("/t/k", "before")
        m.stop()
        self.assertFalse(m.running)
        self.assertTrue(port_closed(m.client_port))
        m.start()
        c.wait_healthy()
        self.assertEqual(c.get("/t/k"), b"before")
        m.freeze()
        self.assertFalse(m.healthy(timeout=0.3))
        m.thaw()
        c.wait_healthy(timeout=10)

    def test_port_taken_before_start_is_retried(self):
        """free_port can race with another process: a member that cannot bind makes the
        cluster start again on new ports."""
        c = EtcdCluster(make_workdir("etcd"), size=1)
        self.addCleanup(c.close)
        m = c.members[0]
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", m.client_port))
        squatter.listen(1)
        self.addCleanup(squatter.close)
        taken = m.client_port
        c.start()
        self.assertNotEqual(m.client_port, taken)
        self.assertIn("address already in use", m.log_text())
        c.put("/t/k", "v")
        self.assertEqual(c.get("/t/k"), b"v")

    def test_close_leaves_nothing(self):
        c = start_etcd(self)
        m = c.members[0]
        pid = m.proc.pid
        self.assertTrue(os.path.isdir(m.data_dir))
        m.freeze()  # close must not hang on a stopped process
        c.close()
        self.assertIsNotNone(m.proc.returncode)
        self.assertFalse(os.path.exists("/proc/%d" % pid) and
                         open("/proc/%d/stat" % pid).read().split()[2] != "Z")
        self.assertTrue(port_closed(m.client_port))
        self.assertFalse(os.path.exists(m.data_dir))
        c.close()  # idempotent


class ThreeNodes(EtcdTestCase):
    def test_kill_leader_reelect_restart(self):
        c = self.etcd(size=3)
        self.assertEqual(len(c.endpoints), 3)
        leader = c.leader()
        ids = {m.member_id for m in c.members}
        self.assertEqual(len(ids), 3, "three distinct members")
        rev = c.put("/t/k", "v1")

        t0 = time.monotonic()
        killed = c.kill_leader()
        self.assertIs(killed, leader)
        self.assertFalse(killed.running)
        new = c.wait_new_leader(killed, timeout=10)
        elected = time.monotonic() - t0
        self.assertIsNot(new, killed)
        print("\n[re-election after SIGKILL of the leader: %.2fs]" % elected)
        rev2 = c.put("/t/k", "v2")  # the two survivors keep a quorum
        self.assertGreater(rev2, rev)

        killed.start()
        back = c.wait_healthy(timeout=15, members=c.members)
        self.assertTrue(all(m.running for m in c.members))
        self.assertIn(back, c.members)
        # The restarted member caught up: read from it alone.
        out = c.etcdctl("get", "--print-value-only", "/t/k", endpoints=[killed.client_url])
        self.assertEqual(out.strip(), "v2")
        self.assertEqual([v for _, v in c.history("/t/k")], [b"v1", b"v2"])

    def test_quorum_loss_and_return(self):
        c = self.etcd(size=3)
        a, b, _ = c.members
        a.stop()
        b.kill()
        survivor = c.running()[0]
        self.assertFalse(survivor.healthy(timeout=2), "one member of three has no quorum")
        with self.assertRaises((EtcdError, OSError)):
            survivor.post("/v3/kv/put", {"key": b64("/t/x"), "value": b64("y")}, timeout=2)
        a.start()
        b.start()
        c.wait_healthy(timeout=15, members=c.members)
        c.put("/t/x", "z")
        self.assertEqual(c.get("/t/x"), b"z")


if __name__ == "__main__":
    unittest.main()
