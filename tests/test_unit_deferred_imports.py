"""flamby_mpi.datasets.deferred_imports beyond what test_unit_fast_exit.py checks, on packages of
our own written to disk and imported by fresh Python processes: what monai's and albumentations'
imports need of a deferred module or a hollow package (Fed-IXI and Fed-ISIC2019 go through all of
it, bit for bit: tests/test_deferred_dataset_imports.py)."""
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, where: Path):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(where)], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def _write(root: Path, files: dict):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_a_deferred_module_imported_again_and_probed_does_not_run(tmp_path):
    """monai imports matplotlib.pyplot before FLamby does, and its optional_import imports modules
    again and reads their __file__ and __path__: none of that is a use of the module."""
    ran = tmp_path / "heavy_ran"
    _write(tmp_path, {"heavy/__init__.py": "", "heavy/sub.py": f"""
        open({str(ran)!r}, 'a').write('x')
        def twice(x):
            return 2 * x
        """})
    _run("""
        import importlib, os, sys
        sys.path.insert(0, sys.argv[1])
        from flamby_mpi.datasets.deferred_imports import deferring
        from flamby_mpi.runtime.startup import loaded_modules
        ran = lambda: os.path.exists(os.path.join(sys.argv[1], "heavy_ran"))
        with deferring(["heavy.sub"]):
            import heavy.sub as first
            import heavy.sub as again                    # Python 3.11 reads its __spec__ here
            assert importlib.import_module("heavy.sub") is first is again
            assert first.__spec__.name == "heavy.sub" and first.__name__ == "heavy.sub"
            assert first.__file__.endswith("sub.py") and first.__loader__ is first.__spec__.loader
        assert not ran(), "probing the module ran it"
        assert "heavy.sub" not in loaded_modules()
        assert again.twice(21) == 42 and ran()           # first use: it runs, once
        assert "heavy.sub" in loaded_modules() and type(again).__name__ == "module"
        assert open(os.path.join(sys.argv[1], "heavy_ran")).read() == "x"
        print("ok")
        """, tmp_path)


def test_hollow_packages_serve_submodules_computed_names_and_circular_imports(tmp_path):
    """What monai's and albumentations' packages need: `from pkg import __version__` (computed as
    the __init__.py would), `from pkg import submodule` before and while that submodule loads, and a
    listed name a submodule lacks (another version) taken from the real __init__.py."""
    _write(tmp_path, {
        "pkg/__init__.py": f"""
            open({str(tmp_path / 'init_ran')!r}, 'a').write('x')
            __version__ = "9.1"
            from pkg.a import A
            MOVED = "from __init__"
            """,
        "pkg/a.py": """
            from pkg import b                      # a submodule not imported yet
            class A:
                pass
            """,
        "pkg/b.py": """
            from pkg import a                      # a submodule still loading (circular)
            from pkg import __version__
            VERSION = __version__
            """,
    })
    _run("""
        import os, sys
        sys.path.insert(0, sys.argv[1])
        from flamby_mpi.datasets.deferred_imports import deferring
        from flamby_mpi.runtime.startup import loaded_modules
        ran = lambda: os.path.exists(os.path.join(sys.argv[1], "init_ran"))
        names = {"A": "pkg.a", "b": "pkg.b", "__version__": lambda: "9.1", "MOVED": "pkg.a"}
        with deferring([], packages={"pkg": names}):
            from pkg import A
        import pkg, pkg.a, pkg.b
        assert not ran(), "the package's __init__.py ran"
        assert A is pkg.a.A and pkg.b.a is pkg.a and pkg.b.VERSION == "9.1"
        assert "pkg" not in loaded_modules() and {"pkg.a", "pkg.b"} <= set(loaded_modules())
        assert pkg.MOVED == "from __init__" and ran()   # listed, but pkg.a has no MOVED: the real __init__
        assert pkg.A is A and "pkg" in loaded_modules()
        print("ok")
        """, tmp_path)


def test_a_datasets_first_imports_make_hollow_packages_its_classes_reach_later(tmp_path):
    """`first`: a hollow package FLamby's import does not reach is made on entering the block, so
    that its submodules imported later (when FLamby's class is built) leave its __init__.py out."""
    _write(tmp_path, {
        "pkg/__init__.py": f"open({str(tmp_path / 'init_ran')!r}, 'a').write('x')\nfrom pkg import other\n",
        "pkg/sub/__init__.py": "",
        "pkg/other.py": "VALUE = 3\n",
    })
    _run("""
        import os, sys
        sys.path.insert(0, sys.argv[1])
        from flamby_mpi.datasets import deferred_imports as deferred
        deferred.BY_DATASET["toy"] = deferred.DatasetDeferrals(packages={"pkg": {}}, first=("pkg.sub",))
        with deferred.deferring(dataset="toy"):
            assert "pkg.sub" in sys.modules
        import pkg.other                                 # after the block, as a FLamby class would
        assert pkg.other.VALUE == 3
        assert not os.path.exists(os.path.join(sys.argv[1], "init_ran"))
        print("ok")
        """, tmp_path)
