"""Packaging for txvoice: the library, its twistd plugin and its console commands."""

from setuptools import find_packages, setup

setup(
    name="txvoice",
    version="0.1.0",
    description="Real-time voice over WebSocket on Twisted and Autobahn",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # twisted.plugins is listed so the plugin module lands in site-packages/twisted/plugins/, where
    # twistd looks; the directory has no __init__.py on purpose (it would shadow Twisted's own).
    # txvoice.static (the browser client and demo page) is a data-only package, named here too.
    packages=find_packages(exclude=["tests", "tests.*"]) + ["txvoice.static", "twisted.plugins"],
    package_data={
        "twisted": ["plugins/txvoice_plugin.py", "plugins/txvoice_engines.py", "plugins/txvoice_dialects.py",
                    "plugins/txvoice_pipelines.py",
                    "plugins/txvoice_telephony.py"],
        "txvoice": ["py.typed"],
        "txvoice.static": ["*.html", "*.js", "*.css", "s0/*.js", "s0/*.d.ts", "s0/*.html"],
    },
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.7",
        "autobahn>=24.4",
        "txaio>=23.1",
        "python-socketio>=5.11",  # S3's Socket.IO /voice (its threading mode, hosted on Twisted)
        "python-engineio>=4.9",
        "zope.interface>=6",
        "numpy>=1.26",
        "opuslib>=3.0.1",
        "webrtcvad-wheels>=2.0.14",
        "soxr>=0.5",
        "service-identity>=24.1",
        "treq>=24.9",
        "PyJWT[crypto]>=2.8",
        "cryptography>=42",
        "prometheus_client>=0.20",
        "pocketsphinx>=5.1",
        "twilio>=9",
        "txredisapi>=1.4.10",  # scale-out on Redis (--redis): Twisted-native, no second event loop
    ],
    extras_require={
        "test": [
            "playwright>=1.45",
            "aiohttp>=3.9",
            "uvloop>=0.19",
            "matplotlib>=3.8",
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "websockets>=13",
            "mypy>=1.10",
            "mypy-zope>=1.0",
        ],
        "bench": [
            "aiohttp>=3.9",
            "uvloop>=0.19",
            "matplotlib>=3.8",
        ],
    },
    entry_points={"console_scripts": ["txvoice-client = txvoice.client.cli:main"]},
    zip_safe=False,
)
