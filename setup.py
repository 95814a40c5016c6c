"""Only for the optional C extension; everything else is in pyproject.toml.

aeterna.linux._fastspawn makes a start cost a vfork instead of a fork of the whole
manager. Without a C compiler the build skips it (optional=True) and Aeterna
falls back to posix_spawn with a /bin/sh shim for LISTEN_PID.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("aeterna.linux._fastspawn", ["aeterna/linux/_fastspawn.c"],
                             optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra"])])
