"""
Find voice pipelines by name through Twisted's plugin system, as engines and dialects are found.

A pipeline plugin names a maker ``"module:callable"`` that takes the daemon's
:class:`~txvoice.config.VoiceConfig` and returns an :class:`IVoicePipeline`; txvoice's own are in
``twisted/plugins/txvoice_pipelines.py`` and ``--pipeline NAME`` picks one.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface, implementer

from txvoice.errors import VoiceError
from txvoice.pipeline.interfaces import IVoicePipeline
from txvoice.plugin import load_target, plugins_by_name

if TYPE_CHECKING:  # pragma: no cover
    from txvoice.config import VoiceConfig


class IPipelineFactory(Interface):
    """A plugin that makes one kind of voice pipeline."""

    name = Attribute("The pipeline's name (str), as ``--pipeline`` takes it.")
    description = Attribute("One line for the option's help.")

    def create(config: "VoiceConfig") -> IVoicePipeline:
        """A pipeline configured by ``config``; ``ValueError`` (or a VoiceError) for a bad setting."""


class PipelineNotFound(VoiceError):
    """No pipeline plugin has that name."""

    code = "unknown_pipeline"


@implementer(IPlugin, IPipelineFactory)
class PipelineFactory:
    """A pipeline plugin whose maker (``"module:callable"``) is imported on the first ``create``."""

    def __init__(self, name: str, target: str, description: str = "") -> None:
        self.name = name
        self.target = target
        self.description = description

    def create(self, config: "VoiceConfig") -> IVoicePipeline:
        pipeline = load_target(self.target)(config)
        if not IVoicePipeline.providedBy(pipeline):
            raise TypeError(f"pipeline {self.name!r} made {pipeline!r}, which does not provide IVoicePipeline")
        return pipeline

    def __repr__(self) -> str:
        return f"<PipelineFactory {self.name} -> {self.target}>"


def pipeline_factories(package: ModuleType | None = None) -> dict[str, IPipelineFactory]:
    """Every pipeline plugin, by name."""
    return plugins_by_name(IPipelineFactory, package, "pipeline")


def create_pipeline(name: str, config: "VoiceConfig", package: ModuleType | None = None) -> IVoicePipeline:
    """Make the pipeline called ``name``; :class:`PipelineNotFound` lists the names there are."""
    factories = pipeline_factories(package)
    try:
        factory = factories[name]
    except KeyError:
        available = ", ".join(sorted(factories)) or "none"
        raise PipelineNotFound(f"unknown pipeline {name!r}; available: {available}", name=name,
                               available=sorted(factories)) from None
    return factory.create(config)
