"""
Packaging for txvoice.  The metadata (name, version, dependencies, scripts) is in pyproject.toml;
this file says only which files to ship, because twistd's plugin modules must land in
site-packages/twisted/plugins/, a directory with no __init__.py (it would hide Twisted's own), which
find_packages cannot see.  txvoice.static (the browser client and demo page) is data only.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(exclude=["tests", "tests.*"]) + ["txvoice.static", "txvoice.static.s0", "twisted.plugins"],
    package_data={
        "twisted": ["plugins/txvoice_plugin.py", "plugins/txvoice_engines.py", "plugins/txvoice_dialects.py",
                    "plugins/txvoice_pipelines.py", "plugins/txvoice_telephony.py"],
        "txvoice": ["py.typed"],
        "txvoice.static": ["*.html", "*.js", "*.css"],
        "txvoice.static.s0": ["*.js", "*.d.ts", "*.html"],
    },
    include_package_data=True,
    zip_safe=False,
)
