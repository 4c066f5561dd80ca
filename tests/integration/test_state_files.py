"""Temporary state files left by crashes (issue 15).

A save writes <state_file>.tmp.PID, fsyncs it and renames it over the state file; a
process killed in between leaves the temporary file behind. At start ficus removes
every one of them except a file a live other process wrote within the last minute (a
save in progress, e.g. by the old process of a blue-green restart). Files that merely
look alike are left alone."""

import os
import subprocess
import time
import unittest

from harness import FicusTestCase, wait_until


def dead_pid():
    """The PID of a process that has exited (and been reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


class StaleTempFiles(FicusTestCase):
    def test_stale_temp_files_are_removed_at_start(self):
        backend = self.backend(name="legacy")
        fx = self.ficus(backend, backend, start=False)
        state = os.path.join(fx.workdir, "state.json")
        fx.config["state_file"] = state
        sleeper = subprocess.Popen(["sleep", "120"])
        self.addCleanup(sleeper.wait)
        self.addCleanup(sleeper.kill)

        def touch(name, age=0):
            path = os.path.join(fx.workdir, name)
            with open(path, "w") as f:
                f.write('{"version": 1, "routes": {}}\n')
            if age:
                t = time.time() - age
                os.utime(path, (t, t))
            return path

        stale = [
            touch("state.json.tmp.%d" % dead_pid()),               # its writer is gone
            touch("state.json.tmp.%d" % dead_pid(), age=7200),
            touch("state.json.tmp.%d" % sleeper.pid, age=3600),    # live PID, but an hour old
        ]
        kept = [
            touch("state.json.tmp.%d" % os.getpid()),  # a live process's save in progress
            touch("state.json.tmp.abc"),
            touch("state.json.tmp.12x"),
            touch("state.json.tmp."),
            touch("state.json.tmpx.%d" % dead_pid()),
            touch("other.json.tmp.%d" % dead_pid()),
            touch("state.json.bak"),
        ]
        a_dir = os.path.join(fx.workdir, "state.json.tmp.%d" % dead_pid())
        os.mkdir(a_dir)  # not a file: left alone

        fx.start()
        wait_until(lambda: not any(os.path.exists(p) for p in stale), 5,
                   what="stale temporary state files removed")
        for p in kept:
            self.assertTrue(os.path.exists(p), "%s was removed" % os.path.basename(p))
        self.assertTrue(os.path.isdir(a_dir), "the directory was removed")
        removed = fx.log_lines(r"removed stale temporary state file")
        self.assertEqual(len(removed), len(stale), "\n".join(removed))
        for p in stale:
            self.assertTrue(any(os.path.basename(p) in line for line in removed), p)


if __name__ == "__main__":
    unittest.main()
