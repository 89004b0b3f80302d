"""The project's scripts/ loaded as modules, for tests that call their functions directly."""
import importlib.util
import sys

from .mpi import REPO


def load_script(name: str, module_name: str = "", register: bool = False):
    """scripts/<name>.py executed as a module named module_name (default: name). register: put
    it in sys.modules first (a script whose dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(module_name or name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[module_name or name] = module
    spec.loader.exec_module(module)
    return module
