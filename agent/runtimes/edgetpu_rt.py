"""The Edge TPU: LiteRT with the libedgetpu delegate, for variants compiled by edgetpu_compiler.

Available when a LiteRT interpreter is installed and libedgetpu (the Coral runtime, package
libedgetpu1-std or -max) is found. The library's location can be forced with
$EDGEHUB_LIBEDGETPU (a file path), and a board with several Edge TPUs can be pointed at one with
$EDGEHUB_EDGETPU_DEVICE (e.g. "usb:0", "pci:0").
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

from edgehub.agent.runtimes.base import Runtime, RuntimeUnavailable, Session, only_threads
from edgehub.agent.runtimes.litert_rt import (
    FALLBACK_MODULE,
    LITERT_MODULE,
    TfliteSession,
    import_interpreter,
    package_version,
)
from edgehub.protocol.formats import EDGETPU
from edgehub.protocol.runtime_settings import RuntimeSettings

LIBRARY_ENV = "EDGEHUB_LIBEDGETPU"
DEVICE_ENV = "EDGEHUB_EDGETPU_DEVICE"
LIBRARY_NAMES = {"linux": "libedgetpu.so.1", "darwin": "libedgetpu.1.dylib", "win32": "edgetpu.dll"}
SEARCH_DIRS = ("/usr/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf", "/usr/lib/x86_64-linux-gnu",
               "/usr/lib", "/usr/local/lib", "/opt/homebrew/lib")


def library_name(platform: str = sys.platform) -> str:
    return LIBRARY_NAMES.get("linux" if platform.startswith("linux") else platform, "libedgetpu.so.1")


def find_libedgetpu(environ: dict[str, str] | None = None, search_dirs: tuple[str, ...] = SEARCH_DIRS) -> Path | None:
    """$EDGEHUB_LIBEDGETPU, else the library in $LD_LIBRARY_PATH or the usual system directories."""
    environ = os.environ if environ is None else environ
    forced = environ.get(LIBRARY_ENV)
    if forced:
        return Path(forced) if Path(forced).is_file() else None
    name = library_name()
    dirs = [d for d in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d] + list(search_dirs)
    for directory in dirs:
        candidate = Path(directory) / name
        if candidate.is_file():
            return candidate
    return None


def _interpreter_module() -> str | None:
    for distribution, module in (("ai-edge-litert", LITERT_MODULE), ("tflite-runtime", FALLBACK_MODULE)):
        if package_version(distribution, module) is not None:
            return module
    return None


class EdgeTpuRuntime(Runtime):
    name = "edgetpu"
    formats = (EDGETPU,)

    def available(self) -> bool:
        return _interpreter_module() is not None and find_libedgetpu() is not None

    def version(self) -> str:
        library = find_libedgetpu()
        if library is None:
            raise RuntimeUnavailable(f"the Edge TPU runtime ({library_name()}) is not installed: "
                                     "install libedgetpu1-std from Coral's repository")
        if _interpreter_module() is None:
            raise RuntimeUnavailable("no LiteRT interpreter for the Edge TPU delegate (pip install ai-edge-litert)")
        try:
            lib = ctypes.CDLL(str(library))
            lib.edgetpu_version.restype = ctypes.c_char_p
            return lib.edgetpu_version().decode(errors="replace")[:64]
        except (OSError, AttributeError):
            # Unreadable version: the file name (libedgetpu.so.1.0) still says which one it is.
            return library.resolve().name[:64]

    def prepare(self) -> None:
        module = _interpreter_module()
        if module is None:
            raise RuntimeUnavailable("no LiteRT interpreter is installed")
        import_interpreter(module)

    def load(self, path: Path, threads: int = 0, settings: RuntimeSettings | None = None) -> Session:
        threads = only_threads(self.name, settings, threads)
        library = find_libedgetpu()
        module = _interpreter_module()
        if library is None or module is None:
            self.version()  # raises with the reason
        interpreter_module = import_interpreter(module)
        device = os.environ.get(DEVICE_ENV)
        try:
            delegate = interpreter_module.load_delegate(str(library), {"device": device} if device else {})
        except (ValueError, OSError, RuntimeError) as exc:
            raise RuntimeUnavailable(f"cannot load the Edge TPU delegate from {library}: "
                                     f"{' '.join(str(exc).split())[:200]}") from None
        interpreter = interpreter_module.Interpreter(model_path=str(path), experimental_delegates=[delegate],
                                                     num_threads=threads or None)
        return TfliteSession(interpreter, threads, ["EdgeTPU" + (f" ({device})" if device else ""), "CPU"])
