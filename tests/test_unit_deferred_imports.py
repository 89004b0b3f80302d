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


def test_submodules_imported_with_a_hollow_package_come_first_and_stay_hollow_later(tmp_path):
    """`imported_with`: made with its package (monai's __init__.py imports monai.utils before
    anything else), a hollow subpackage that FLamby's import does not reach stays hollow when its
    submodules are imported later (albumentations' transforms, when FLamby's class is built); none
    of it happens unless the package itself is imported."""
    _write(tmp_path, {
        "pkg/__init__.py": f"open({str(tmp_path / 'init_ran')!r}, 'a').write('x')\nfrom pkg import sub\n",
        "pkg/sub/__init__.py": f"open({str(tmp_path / 'sub_init_ran')!r}, 'a').write('x')\n",
        "pkg/sub/other.py": "VALUE = 3\n",
        "pkg/early.py": "import sys\nSUB_THEN = 'pkg.sub' in sys.modules\n",
    })
    _run("""
        import os, sys
        sys.path.insert(0, sys.argv[1])
        from flamby_mpi.datasets import deferred_imports as deferred
        deferred.BY_DATASET["toy"] = deferred.DatasetDeferrals(
            packages={"pkg": {}, "pkg.sub": {}}, imported_with={"pkg": ("pkg.early", "pkg.sub")})
        with deferred.deferring(dataset="toy"):
            pass
        assert "pkg" not in sys.modules and "pkg.sub" not in sys.modules   # nothing imported pkg
        with deferred.deferring(dataset="toy"):
            import pkg
            assert pkg.early.SUB_THEN is False and "pkg.sub" in sys.modules  # in the order given
        import pkg.sub.other                             # after the block, as a FLamby class would
        assert pkg.sub.other.VALUE == 3
        for marker in ("init_ran", "sub_init_ran"):
            assert not os.path.exists(os.path.join(sys.argv[1], marker)), marker
        print("ok")
        """, tmp_path)
