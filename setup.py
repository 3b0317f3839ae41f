"""
Packaging for txvoice.  The metadata (name, version, dependencies, scripts) is in pyproject.toml;
this file says only which files to ship, because twistd's plugin modules must land in
site-packages/twisted/plugins/, a directory with no __init__.py (it would hide Twisted's own), which
find_packages cannot see.  txvoice.static (the browser client and demo page) is data only.

txvoice/audio/_native.c is the native batch ingest (txvoice/audio/native.py loads it with ctypes):
a plain shared library with no Python API and no headers beyond libc (libopus and webrtcvad are
reached through function pointers at run time).  It is optional: without a compiler the install
still works, on the pure-Python path.  ``python setup.py build_ext --inplace`` builds it in a
checkout (scripts/setup-env.sh does).
"""

from setuptools import Extension, find_packages, setup

native = Extension(
    "txvoice.audio._native",
    sources=["txvoice/audio/_native.c"],
    depends=["txvoice/audio/_native_fft.h"],
    extra_compile_args=["-O2", "-std=c99", "-D_DEFAULT_SOURCE"],
    libraries=["m"],
    optional=True,
)

setup(
    packages=find_packages(exclude=["tests", "tests.*"]) + ["txvoice.static", "txvoice.static.s0", "twisted.plugins"],
    package_data={
        "twisted": ["plugins/txvoice_plugin.py", "plugins/txvoice_engines.py", "plugins/txvoice_dialects.py",
                    "plugins/txvoice_pipelines.py", "plugins/txvoice_telephony.py"],
        "txvoice": ["py.typed"],
        "txvoice.static": ["*.html", "*.js", "*.css"],
        "txvoice.static.s0": ["*.js", "*.d.ts", "*.html"],
    },
    ext_modules=[native],
    include_package_data=True,
    zip_safe=False,
)
