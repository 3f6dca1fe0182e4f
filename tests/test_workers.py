"""data/workers.py: spawned generator workers skip the launching script's top level."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import contextlib, os, sys
    sys.path.insert(0, {root!r})
    with open({log!r}, "a") as f:        # the top level: once per process that runs it
        f.write(f"{{os.getpid()}}\\n")
    from data.workers import spawn_context

    if __name__ == "__main__":
        import multiprocessing as mp
        lean = sys.argv[1] == "lean"
        with (spawn_context() if lean else contextlib.nullcontext(mp.get_context("spawn"))) as ctx:
            pool = ctx.Pool(2)
            assert pool.map(abs, [-1, -2]) == [1, 2]
            pool.close()
            pool.join()                               # every worker started and ended
        assert __file__.endswith("launcher.py")       # restored after the block
        print("ok")
""")


def _run(tmp_path, mode):
    log = tmp_path / f"{mode}.log"
    script = tmp_path / "launcher.py"
    script.write_text(SCRIPT.format(root=ROOT, log=str(log)))
    out = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    return log.read_text().split()


def test_spawned_workers_skip_the_launching_script(tmp_path):
    # plain spawn: both workers re-run the script's top level (3 processes log);
    # spawn_context: only the launcher does
    assert len(_run(tmp_path, "plain")) == 3
    assert len(_run(tmp_path, "lean")) == 1
