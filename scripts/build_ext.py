"""Build the compiled hot path (Cython) in place: ``.venv/bin/python scripts/build_ext.py``.

``scripts/bootstrap.sh`` runs it. Each extension lists the sources it is built from: its .pyx and
the pure-Python modules it mirrors. Their sha256 is compiled in (``SOURCE_DIGEST``), and
``core.accel.load`` uses the build only while the sources on disk still hash to it, so an edit
of either side without a rebuild runs the pure-Python code rather than a stale build.

Exit status 0 when every extension built, 1 otherwise (the daemon then runs on the fallback).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.accel import source_digest  # noqa: E402

# module -> (its .pyx, the Python modules it mirrors)
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "candles._speedups": ("candles/_speedups.pyx", "candles/aggregator.py", "candles/snapshot.py"),
    "brokers.kite._speedups": (
        "brokers/kite/_speedups.pyx",
        "brokers/kite/protocol.py",
        "brokers/codec.py",
        "core/fastnew.py",
        "brokers/_tick_slots.pxi",
    ),
    "publishers._speedups": ("publishers/_speedups.pyx", "publishers/nats.py"),
    "brokers.kotak_neo._speedups": (
        "brokers/kotak_neo/_speedups.pyx",
        "brokers/kotak_neo/protocol.py",
        "brokers/codec.py",
        "core/fastnew.py",
        "brokers/_tick_slots.pxi",
    ),
}
BUILD = ROOT / "build" / "cython"


def main() -> int:
    try:
        from Cython.Build import cythonize
        from setuptools import Extension, setup
    except ImportError as exc:
        print(f"compiled hot path not built: {exc.name} is not installed (pip install -r requirements.txt)", file=sys.stderr)
        return 1
    os.chdir(ROOT)
    BUILD.mkdir(parents=True, exist_ok=True)
    extensions = []
    for name, sources in EXTENSIONS.items():
        pyx = sources[0]
        digest = source_digest(sources)
        # written beside the generated C, read by the .pyx through `include`
        (BUILD / f"{name}.pxi").write_text(f"SOURCES = {sources!r}\nSOURCE_DIGEST = {digest!r}\n")
        extensions.append(Extension(name, [pyx], extra_compile_args=["-O2"]))
    try:
        setup(
            name="marketfeed-speedups",
            packages=[],
            py_modules=[],
            ext_modules=cythonize(
                extensions,
                build_dir=str(BUILD),
                include_path=[str(BUILD), str(ROOT)],
                quiet=True,
                compiler_directives={"language_level": "3"},
            ),
            script_args=["-q", "build_ext", "--inplace", "--build-temp", str(BUILD / "temp")],
        )
    except (SystemExit, Exception) as exc:  # noqa: BLE001 - distutils reports a failed compile as SystemExit
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            return 0
        print(f"compiled hot path not built: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
