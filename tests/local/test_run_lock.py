"""One ``embedforge run`` per output folder: the advisory lock on ``--out`` (:func:`holding_out`), held by a real
process — refused while it lives (one line naming its pid), free again the moment it dies, even by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from embedforge.errors import OutputBusy
from embedforge.local.attempts import holding_out

_HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from embedforge.local.attempts import holding_out
    with holding_out(Path(sys.argv[1])):
        print("held", flush=True)
        sys.stdin.read()
""")


def test_a_held_out_is_refused_until_its_holder_dies(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusy) as err, holding_out(out):
            pass
        assert str(err.value) == (f"another embedforge run holds {out} (pid {holder.pid}); wait for it or choose "
                                  "another --out")
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up at all: the kernel releases the lock
        holder.wait()
        with holding_out(out):
            assert (out / ".embedforge-run.lock").read_text() == str(os.getpid())
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
        holder.stdout.close()
        holder.stdin.close()


def test_the_lock_is_released_when_the_run_ends(tmp_path):
    with holding_out(tmp_path):
        pass
    with holding_out(tmp_path):  # (would raise if the first were still held)
        pass
