"""The simplest agent: it says back what it heard (a smoke test for the whole speech loop)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zope.interface import implementer

from txvoice.engines.interfaces import AgentContext, AgentReply, IAgent, ToolRegistry


@implementer(IAgent)
class EchoAgent:
    """Replies with the transcript, unchanged; open vocabulary, no tools, no memory."""

    name = "echo"

    def __init__(self) -> None:
        self.tools = ToolRegistry()

    @classmethod
    def fromOptions(cls, options: Mapping[str, Any]) -> "EchoAgent":
        return cls()

    def phrases(self) -> None:
        return None

    def respond(self, text: str, context: AgentContext) -> AgentReply:
        return AgentReply(text.strip(), (), {"agent": self.name})
