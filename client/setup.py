"""Build hook (issue 15): ``DYNQ_MYPYC=1`` compiles the pure hot modules with mypyc; without
it - or without mypy or a C compiler - the same package builds as pure Python, so a wheel
always installs. Compiling needs mypy (which ships mypyc) in the build environment:

    pip install mypy setuptools
    DYNQ_MYPYC=1 pip install --no-build-isolation ./client

``dynq_client.compiled()`` says at run time which flavour was imported. Keep the helper
below the same as the one in the repository's top-level setup.py."""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

COMPILED = ["dynq_client/versions.py", "dynq_client/protocol.py", "dynq_client/ring.py", "dynq_client/quorum.py"]
"""Chosen by profile (docs/design.md, "mypyc"): pure code on every request path."""


BUILDING = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}
"""setup.py commands that build extensions (setuptools' PEP 517 hooks pass one)."""


def mypyc_extensions(paths: list[str], group: str) -> list[Any]:
    """The mypyc extensions for ``paths`` when DYNQ_MYPYC=1 asks for them and mypyc can
    type-check them; otherwise none (pure Python), with the reason on stderr."""
    if os.environ.get("DYNQ_MYPYC", "") != "1":
        return []
    if not BUILDING & set(sys.argv[1:]):
        return []  # metadata or an sdist: no need to type-check and generate C
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        print(f"DYNQ_MYPYC=1 but mypyc is not importable ({exc}): building pure Python "
              "(pip install mypy, then build with --no-build-isolation)", file=sys.stderr)
        return []
    try:
        return list(mypycify(paths, opt_level="3", group_name=group))
    except (SystemExit, Exception) as exc:  # noqa: BLE001 - mypy's errors end in SystemExit
        print(f"DYNQ_MYPYC=1 but mypyc failed ({exc!r}): building pure Python", file=sys.stderr)
        return []


class OptionalBuildExt(build_ext):
    """A compiler error leaves the pure modules (the .py files ship either way): the
    compiled outputs are dropped, all or nothing, since mypyc's modules share one library."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - CCompilerError, DistutilsError, OSError: no usable compiler
            print(f"DYNQ_MYPYC=1 but compiling failed ({exc}): building pure Python", file=sys.stderr)
            for output in self.get_outputs():
                if os.path.exists(output):
                    os.remove(output)
            self.extensions = []


setup(ext_modules=mypyc_extensions(COMPILED, "dynq_client"), cmdclass={"build_ext": OptionalBuildExt})
