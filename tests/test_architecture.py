"""Architecture rules of the avret package (scripts/check_architecture.py), and the checker itself."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_architecture", REPO / "scripts" / "check_architecture.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_architecture", module)
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


def test_avret_has_no_architecture_violations():
    violations = checker.check(REPO / "avret")
    assert violations == [], "\n".join(["architecture violations:", *violations])


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "avret"


SYNTHETIC = {
    "avret/__init__.py": "",
    "avret/a/__init__.py": "from avret.a.x import public\n",  # re-export: no cycle with a.x by itself
    # a.x -> a.y -> a.z -> a.x at module level: one cycle
    "avret/a/x.py": """
        from avret.a.y import y_thing
        from avret.a.w import _helper

        def public():
            from avret.a.w import w_thing  # function level: no edge
            return y_thing, w_thing, _helper
        """,
    "avret/a/y.py": "from . import z\ny_thing = 1\n",
    "avret/a/z.py": """
        from typing import TYPE_CHECKING
        from .x import public
        if TYPE_CHECKING:
            from avret.a.w import WType
        """,
    # w imports x only inside a function and under TYPE_CHECKING: no cycle through w
    "avret/a/w.py": """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from avret.a.x import public
        w_thing = 2
        WType = int
        def _helper():
            import avret.a.x
            return avret.a.x
        """,
    "avret/eval/__init__.py": "",
    "avret/eval/metrics.py": """
        def load():
            from avret.models import towers  # eval -> models, even in a function: violation
            return towers
        """,
    "avret/models/__init__.py": "",
    "avret/models/towers.py": """
        import avret.index.store  # models -> index at module level: violation
        def later():
            from avret.eval import metrics  # function level: allowed for models
            return metrics
        """,
    "avret/index/__init__.py": "",
    "avret/index/store.py": "from avret.a.w import __all__ as names  # dunder: not private\n",
}


def test_checker_finds_cycle_private_import_and_layering(tmp_path, capsys):
    pkg = write_package(tmp_path, SYNTHETIC)
    found = checker.check(pkg)
    cycles = [v for v in found if v.startswith("cycle:")]
    assert cycles == ["cycle: avret.a.x -> avret.a.y -> avret.a.z -> avret.a.x"], found
    private = [v for v in found if v.startswith("private import:")]
    assert private == ["private import: avret/a/x.py:3: _helper from avret.a.w"], found
    layering = [v for v in found if v.startswith("layering:")]
    assert len(layering) == 2, found
    assert "avret/eval/metrics.py:3" in layering[0] and "avret.models" in layering[0]
    assert "avret/models/towers.py:2" in layering[1] and "avret.index.store" in layering[1]
    assert len(found) == 4

    assert checker.main([str(pkg)]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed == found


def test_checker_passes_a_clean_package(tmp_path, capsys):
    pkg = write_package(
        tmp_path,
        {
            "avret/__init__.py": "",
            "avret/eval/__init__.py": "from avret.eval.m import f\n",
            "avret/eval/m.py": "from avret.data import load\n\ndef f():\n    return load\n",
            "avret/data.py": "def load():\n    from avret.eval import f  # function level: no cycle\n    return f\n",
        },
    )
    assert checker.check(pkg) == []
    assert checker.main([str(pkg)]) == 0
    assert capsys.readouterr().out == ""
