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
    back = [v for v in found if v.startswith("back-arrow:")]  # models -> index, models -> eval (in a function)
    assert [v.split(":")[1:3] for v in back] == [[" avret/models/towers.py", "2"],
                                                 [" avret/models/towers.py", "4"]], back
    assert len(found) == 6

    assert checker.main([str(pkg)]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed == found


def test_checker_passes_a_clean_package(tmp_path, capsys):
    pkg = write_package(
        tmp_path,
        {
            "avret/__init__.py": "",
            "avret/eval/__init__.py": "from avret.eval.m import f\n",
            "avret/eval/m.py": "from avret.eval.n import load\n\ndef f():\n    return load\n",
            "avret/eval/n.py": "def load():\n    from avret.eval import f  # function level: no cycle\n    return f\n",
            "avret/train/__init__.py": "from avret.eval import f  # a later stage imports an earlier one\n",
        },
    )
    assert checker.check(pkg) == []
    assert checker.main([str(pkg)]) == 0
    assert capsys.readouterr().out == ""


def test_cli_has_no_architecture_violations():
    assert checker.check_cli(REPO / "cli") == []


def test_back_arrows_count_type_only_and_function_imports(tmp_path):
    root = write_package(tmp_path, {
        "avret/__init__.py": "from avret.distill import thing\n",  # the front door is exempt
        "avret/losses/__init__.py": "",
        "avret/losses/kd.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from avret.train.tower_training import Batch
            """,
        "avret/data/__init__.py": "",
        "avret/data/folder.py": "def f():\n    from avret.index.store import AVIndex\n",
        "avret/train/__init__.py": "",
        "avret/train/tower_training.py": "from avret.losses.kd import x\nBatch = 1\n",
        "avret/index/__init__.py": "",
        "avret/index/store.py": "import avret_cli.main\nAVIndex = 1\n",
        "avret/distill/__init__.py": "thing = 1\n",
    })
    found = checker.check(root)
    assert any(v.startswith("back-arrow: avret/losses/kd.py:4: losses imports avret.train.tower_training")
               for v in found)
    assert any(v.startswith("back-arrow: avret/data/folder.py:2: data imports avret.index.store") for v in found)
    assert any(v.startswith("cli import: avret/index/store.py:1") for v in found)
    assert not any("train/towers.py" in v for v in found)  # train may import losses
    assert not any("avret/__init__.py" in v for v in found)


def test_cli_private_imports_and_cycles_are_found(tmp_path):
    cli = tmp_path / "cli"
    (cli).mkdir()
    (cli / "__init__.py").write_text("")
    (cli / "a.py").write_text("from .b import x\nfrom avret.io import _secret\n")
    (cli / "b.py").write_text("from .a import y\nx = 1\n")
    found = checker.check_cli(cli)
    assert any(v.startswith("cycle: cli.a -> cli.b -> cli.a") or v.startswith("cycle: cli.b") for v in found), found
    assert any("private import: cli.a:2: _secret from avret.io" in v for v in found)
