"""Run ``avret`` CLI commands with a fault at the N-th filesystem step, without hooks in production code.

A server process (``python -m tests.fault_runner``) imports the CLI once, then forks one child per
request; the child wraps the filesystem primitives avret's writers use (``os.replace``, ``os.rename``,
``os.fsync``, ``os.mkdir``, ``os.rmdir``, ``os.unlink``, creating ``os.open`` and writing ``open``),
counts their calls and, at the ``fault_at``-th one (before it runs), either SIGKILLs itself or raises
``OSError(errno)``; ``ro_root`` makes every write under a directory fail with EROFS, like a read-only
mount. ``fault_at=0`` runs the command to the end and returns the trace of every step, so that a test
can pick its kill points (see ``tests/test_faults.py``). One fork costs milliseconds; a fresh
``python + torch`` process costs seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the child side
def _install_hooks(fault_at: int, fault: str, trace_fd: int, ro_root: str | None, match: str | None) -> None:
    import builtins
    import errno
    import io
    import re

    count, hits = [0], [0]
    pattern = re.compile(match) if match else None
    ro = os.path.realpath(ro_root) if ro_root else None

    def under_ro(path: Any, dir_fd: int | None = None) -> bool:
        if ro is None or isinstance(path, int):
            return False
        p = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(p):
            p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
        p = os.path.realpath(os.path.abspath(p))
        return p == ro or p.startswith(ro + os.sep)

    def step(name: str, path: Any, dir_fd: int | None = None, also: Any = None) -> None:
        if under_ro(path, dir_fd) or (also is not None and under_ro(also, dir_fd)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        count[0] += 1
        shown = os.fsdecode(path) if not isinstance(path, int) else str(path)
        os.write(trace_fd, f"{count[0]}\t{name}\t{shown}\n".encode())
        if pattern is None or pattern.search(f"{name} {shown}"):
            hits[0] += 1
        else:
            return
        if hits[0] == fault_at:
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            code = getattr(errno, fault)
            raise OSError(code, os.strerror(code), os.fsdecode(path) if not isinstance(path, int) else None)

    def wrap(module: Any, attr: str, name: str, pick: Any) -> None:
        real = getattr(module, attr)

        def hooked(*args: Any, **kwargs: Any) -> Any:
            target = pick(args, kwargs)
            if target is not None:
                step(name, target, kwargs.get("dir_fd"), args[0] if name in ("replace", "rename") else None)
            return real(*args, **kwargs)

        setattr(module, attr, hooked)

    first = lambda a, k: a[0] if a else k.get("path")  # noqa: E731
    second = lambda a, k: a[1] if len(a) > 1 else k.get("dst")  # noqa: E731
    for attr in ("replace", "rename"):
        wrap(os, attr, attr, second)
    for attr in ("mkdir", "rmdir", "unlink", "remove"):
        wrap(os, attr, attr, first)

    real_fsync = os.fsync

    def fsync(fd: Any) -> None:
        fd_no = fd if isinstance(fd, int) else fd.fileno()
        step("fsync", os.readlink(f"/proc/self/fd/{fd_no}"))
        real_fsync(fd)

    os.fsync = fsync
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT
    wrap(os, "open", "create", lambda a, k: a[0] if len(a) > 1 and a[1] & writing else None)
    real_open = io.open

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if not isinstance(file, int) and any(c in mode for c in "wax+"):
            step(f"open-{mode}", file)
        return real_open(file, mode, *args, **kwargs)

    io.open = builtins.open = open_  # type: ignore[assignment]


def _child(req: dict[str, Any], log: str, trace: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    trace_fd = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.chdir(req.get("cwd") or os.getcwd())
    code = 1
    try:
        import torch

        torch.set_num_threads(1)
        from avret_cli.main import app

        if "call" in req:  # a helper of the tests (building fixtures with the warm imports)
            import importlib

            module, name = req["call"].split(":")
            getattr(importlib.import_module(module), name)(*req["args"])
            code = 0
        else:
            _install_hooks(int(req.get("fault_at", 0)), req.get("fault", "kill"), trace_fd, req.get("ro_root"),
                           req.get("match"))
            app(req["argv"], prog_name="avret")
            code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # an uncaught exception: print it like Python does, exit 1
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _warm_imports() -> None:
    """Import once here what the commands import lazily (torch's optimizers pull in torch._dynamo: ~3 s).

    Nothing is computed: a process that ran OpenMP work must not fork.
    """
    import importlib

    import torch

    for name in ("avret.train.runs", "avret.distill.pipeline", "avret.index.build", "avret.sentiment.student_training",
                 "avret.features.extract", "avret.data.folder", "avret.io", "faiss", "avret.sentiment.student",
                 "transformers.models.roberta.modeling_roberta", "transformers.models.auto.modeling_auto",
                 "transformers.models.auto.tokenization_auto", "transformers.tokenization_utils_fast",
                 "avret.models.clip", "open_clip", "avret.features.vggish", "av", "typer._adapters"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    try:  # transformers compiles ~1000 regexes on its first model load (1.5 s), then caches them
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        get_checkpoint_conversion_mapping("roberta")
    except ImportError:
        pass


def serve() -> None:
    """Answer one JSON request a line on stdin with one JSON line on stdout (see :class:`FaultRunner`)."""
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch  # noqa: F401 - imported once here, inherited by every fork

    import avret_cli.main  # noqa: F401

    _warm_imports()
    work = tempfile.mkdtemp(prefix="avret-fault-runner-")
    log, trace = os.path.join(work, "log"), os.path.join(work, "trace")
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req, log, trace)
        _, status = os.waitpid(pid, 0)
        with open(log, encoding="utf-8", errors="replace") as fh:
            output = fh.read()
        with open(trace, encoding="utf-8") as fh:
            steps = [ln.split("\t") for ln in fh.read().splitlines()]
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        reply = {"killed": killed, "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                 "steps": steps, "output": output, "pid": pid}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    import shutil

    shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------ fixtures, built in a warm fork
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def make_sentiment_inputs(root: str) -> None:
    """``root/encoder`` (a tiny random RoBERTa) and ``root/label.csv`` (20 MOSI-style rows)."""
    import csv

    from avret.sentiment.tiny import make_tiny_roberta
    from tests.test_sentiment_student import FILL, NEG, POS, tiny_examples

    make_tiny_roberta(Path(root) / "encoder", POS + NEG + FILL, hidden=16, layers=1)
    with open(Path(root) / "label.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "clip_id", "text", "label", "mode"])
        for e in tiny_examples(20):
            w.writerow([e.id[:1], e.id[1:], e.text, e.label, "valid" if e.split == "dev" else e.split])


def make_feature_inputs(root: str) -> None:
    """Tiny random VGGish and CLIP weights, and short generated media: ``media/{a,b}.mp4``, ``more/c.mp4``."""
    import torch

    from avret.features.synthetic_media import write_media
    from avret.features.vggish import VGGish
    from avret.models.clip import load_clip

    d = Path(root)
    torch.manual_seed(0)
    torch.save(VGGish((4, 4, 8, 8, 8, 8), (16, 16, 128)).state_dict(), d / "vggish.pth")
    (d / "avret-fault-clip.json").write_text(json.dumps(TINY_CLIP))
    torch.save(load_clip(str(d / "avret-fault-clip.json"), None, allow_random=True).state_dict(), d / "clip.pt")
    for sub, name, freq in (("media", "a", 440.0), ("media", "b", 660.0), ("more", "c", 880.0)):
        (d / sub).mkdir(exist_ok=True)
        write_media(d / sub / f"{name}.mp4", seconds=1.0, freq=freq)


# ------------------------------------------------------------------ the test side
class FaultRunner:
    """A long-lived server subprocess; :meth:`run` executes one CLI command in a fresh fork of it."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fault_runner"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, argv: list[Any], fault_at: int = 0, fault: str = "kill",
            ro_root: str | os.PathLike[str] | None = None, match: str | None = None) -> dict[str, Any]:
        """Run ``avret ARGV`` in a fork; the reply has ``killed``, ``code``, ``steps`` ([n, kind, path]),
        ``output``. ``fault``: ``"kill"`` (SIGKILL) or an errno name (``"ENOSPC"``) raised at step
        ``fault_at`` (0: none), counting only the steps whose ``"kind path"`` matches the regex ``match``
        when given; ``ro_root``: every write under that directory fails with EROFS."""
        return self._ask({"argv": [str(a) for a in argv], "fault_at": fault_at, "fault": fault,
                          "ro_root": str(ro_root) if ro_root else None, "match": match})

    def call(self, function: str, *args: Any) -> None:
        """Call ``"module:function"(*args)`` (JSON arguments) in a fork, e.g. to build a fixture."""
        res = self._ask({"call": function, "args": [str(a) if isinstance(a, Path) else a for a in args]})
        if res["code"] != 0:
            raise RuntimeError(f"{function} failed: {res['output'][-3000:]}")

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fault runner died")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


if __name__ == "__main__":
    serve()
