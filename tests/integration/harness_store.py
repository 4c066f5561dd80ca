"""Helpers for the fleet state store tests: several real ficus instances sharing one
etcd prefix, with their admin APIs.

Builds on harness.py, harness_admin.py and harness_etcd.py without changing them:

  store_config(endpoints, prefix, ...)   the state_store object of an etcd fleet
  FleetCase                              FicusTestCase with a watchdog fit for fleets,
                                         a shared etcd cluster per class (started
                                         once in setUpClass, closed in tearDownClass)
                                         and instance(s) helpers
  route_of(f, name), store_of(f)         one instance's view of a route and of its store
  wait_all(instances, pred, ...)         waits until pred(f) holds on every instance

Python standard library only. Every wait has a deadline.
"""

import itertools
import os
import time

from harness import FicusTestCase, make_workdir, sanitized, wait_until
from harness_admin import AdminFicus, named_backend, slow
from harness_etcd import EtcdCluster, etcd_available

_prefixes = itertools.count(1)

# Short leases so that a killed instance's keys go within seconds; a call's
# deadline is at most half of the lease (ficus check says so).
LEASE_TTL_S = 2
TIMEOUT_MS = 1000


def store_config(endpoints, prefix, lease_ttl_s=LEASE_TTL_S, timeout_ms=TIMEOUT_MS):
    return {"type": "etcd", "endpoints": list(endpoints), "prefix": prefix,
            "lease_ttl_s": lease_ttl_s, "timeout_ms": timeout_ms}


def new_prefix(tag):
    """A prefix of its own for one test, so that tests can share an etcd."""
    return "/ficus-test/%s-%d-%d/" % (tag, os.getpid(), next(_prefixes))


def route_of(f, name="all"):
    """The route as instance f's admin API shows it (None when it cannot answer)."""
    try:
        with f.admin() as a:
            return a.route(name)
    except OSError:
        return None


def store_of(f):
    """The top-level state_store object of f's /api/v1/routes."""
    with f.admin() as a:
        status, doc = a.get_json("/api/v1/routes")
    assert status == 200, doc
    return doc["state_store"]


def wait_all(instances, pred, timeout, what):
    """Waits until pred(f) is true for every instance f."""
    wait_until(lambda: all(pred(f) for f in instances), timeout, interval=0.02, what=what)


def percent_is(name, value):
    def pred(f):
        r = route_of(f, name)
        return r is not None and abs(r["new_percent"] - value) < 1e-9
    return pred


def live(f):
    try:
        return store_of(f)["status"] == "live"
    except (OSError, AssertionError):
        return False


class FleetCase(FicusTestCase):
    """A shared etcd cluster of CLUSTER_SIZE members per class (None: no cluster)."""

    WATCHDOG_SECONDS = 240 if sanitized() else 120
    CLUSTER_SIZE = 1

    @classmethod
    def setUpClass(cls):
        cls.cluster = None
        if not cls.CLUSTER_SIZE or not etcd_available():
            return
        cls.cluster = EtcdCluster(make_workdir("etcd"), size=cls.CLUSTER_SIZE)
        try:
            cls.cluster.start()
        except Exception:
            cls.cluster.close(keep_logs=True)
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.cluster is not None:
            cls.cluster.close()

    def setUp(self):
        if self.CLUSTER_SIZE and self.cluster is None:
            self.skipTest("etcd and etcdctl not installed (apt-get install etcd-server "
                          "etcd-client)")
        super().setUp()

    def backends(self, new_handler=named_backend):
        return self.backend(named_backend, name="legacy"), self.backend(new_handler, name="new")

    def instance(self, legacy, new, prefix, route=None, endpoints=None, start=True,
                 state_file=True, extra=None, allow_errors=(), name="ficus", **store_kw):
        """One ficus of the fleet at prefix, with an admin API and a token."""
        cfg = {"routes": [route or {"name": "all", "new_percent": 0,
                                    "sticky": {"header": "x-user-id"}}],
               "state_store": store_config(endpoints or self.cluster.endpoints, prefix,
                                           **store_kw)}
        if extra:
            cfg.update(extra)
        f = AdminFicus(legacy, new, config=cfg, state_file=state_file,
                       allow_errors=allow_errors, name=name)
        self._ficuses.append(f)
        if start:
            f.start()
        return f

    def fleet(self, n, legacy, new, prefix, **kw):
        """n instances, each live on the store."""
        fs = [self.instance(legacy, new, prefix, name="ficus%d" % i, **kw) for i in range(n)]
        wait_all(fs, live, slow(15), "every instance live on etcd")
        return fs


__all__ = ["FleetCase", "store_config", "new_prefix", "route_of", "store_of", "wait_all",
           "percent_is", "live", "LEASE_TTL_S", "TIMEOUT_MS", "slow", "time"]
