"""Only for the optional C extension and the scaffolds; everything else is in pyproject.toml.

aeterna.linux._fastspawn makes a start cost a vfork instead of a fork of the whole
manager. Without a C compiler the build skips it (optional=True) and Aeterna
falls back to posix_spawn with a /bin/sh shim for LISTEN_PID.

templates/ (the profiles of ``aeterna init``) lives at the top of the tree, and
goes into the wheel as aeterna/templates, so that an installed ``aeterna init``
finds it (aeterna/scaffold.py looks there first, then beside the package).
"""

import os
import shutil

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildWithTemplates(build_py):
    def run(self) -> None:
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        shutil.copytree(os.path.join(here, "templates"),
                        os.path.join(self.build_lib, "aeterna", "templates"),
                        dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithTemplates},
      ext_modules=[Extension("aeterna.linux._fastspawn", ["aeterna/linux/_fastspawn.c"],
                             optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra"])])
