"""
A small rule-based assistant that works out of the box, offline.

It greets, lists what it can do, tells the time and date (through its ``get_time`` tool, so tool
calls show up as events), repeats what it is asked to ("repeat after me ...", "say ..."), remembers
each conversation ("what did I say", "say that again") and otherwise answers politely with what it
heard.  :meth:`RulesAgent.phrases` is everything it understands, to constrain speech recognition.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from txvoice.engines.interfaces import AgentContext, AgentReply, IAgent, Tool, ToolError, ToolRegistry
from txvoice.engines.site_tools import SiteDescription, SiteTools

_PUNCTUATION = re.compile(r"[^\w' ]+")


def _normalize(text: str) -> str:
    return " ".join(_PUNCTUATION.sub(" ", text.lower().replace("-", " ")).split())


def _sentence(text: str) -> str:
    """End ``text`` with a full stop unless it already ends a sentence."""
    return text if text.endswith((".", "!", "?")) else text + "."


@dataclass(frozen=True, slots=True)
class Turn:
    """One thing said in a conversation."""

    role: str  # "user" or "assistant"
    text: str


class ConversationMemory:
    """The last ``max_turns`` turns of each of the last ``max_conversations`` conversations (reactor thread)."""

    def __init__(self, max_turns: int = 20, max_conversations: int = 1000) -> None:
        self.max_turns = max_turns
        self.max_conversations = max_conversations
        self._conversations: OrderedDict[str, deque[Turn]] = OrderedDict()

    def history(self, key: str) -> list[Turn]:
        turns = self._conversations.get(key)
        return list(turns) if turns is not None else []

    def last(self, key: str, role: str) -> Turn | None:
        for turn in reversed(self._conversations.get(key, ())):
            if turn.role == role:
                return turn
        return None

    def add(self, key: str, role: str, text: str) -> None:
        turns = self._conversations.get(key)
        if turns is None:
            turns = self._conversations[key] = deque(maxlen=self.max_turns)
            while len(self._conversations) > self.max_conversations:
                self._conversations.popitem(last=False)
        self._conversations.move_to_end(key)
        turns.append(Turn(role, text))

    def forget(self, key: str) -> None:
        self._conversations.pop(key, None)


# What the agent understands.  Every word is in PocketSphinx's en-US dictionary.
GREETINGS = ("hello", "hi there", "good morning", "good afternoon", "good evening")
HELP = ("help", "what can you do")
TIME = ("what time is it", "what is the time", "tell me the time")
DATE = ("what is the date", "what day is it", "what is the date today")
RECALL_USER = ("what did i say", "what did i just say")
RECALL_ASSISTANT = ("say that again", "what did you say")
THANKS = ("thank you", "thanks")
GOODBYE = ("goodbye", "see you later")
ECHO_PREFIXES = ("repeat after me", "say")
#: Also understood when typed or heard by an open-vocabulary recognizer, but left out of phrases():
#: too close to a phrase above for a constrained recognizer to tell apart, or redundant.
VARIANTS = {
    "greeting": ("hi", "hey", "hey there", "good day"),
    "help": ("what can i say", "what can you do for me"),
    "time": ("what's the time", "tell me the time please"),
    "date": ("what's the date", "what's the date today", "what day is today"),
    "thanks": ("thanks a lot", "thank you very much"),
    "goodbye": ("bye", "bye bye", "good bye"),
}
#: What "repeat after me" / "say" are offered with when recognition is constrained to phrases().
ECHO_EXAMPLES = (
    "hello world",
    "the weather is nice today",
    "good night",
    "i like green apples",
    "testing one two three",
    "open the door please",
)


NAVIGATE = re.compile(r"^(?:please )?(?:go to|take me to|navigate to) (?:the )?(?P<page>[\w ]+?)(?: page)?$")


def _phraseRule(phrases: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("^(?:" + "|".join(re.escape(p) for p in phrases) + ")$")


@implementer(IAgent)
class RulesAgent:
    """The rule-based assistant; ``now`` and ``tz`` make the clock testable and local."""

    name = "rules"
    log = Logger()

    def __init__(self, *, now: Callable[[], datetime] | None = None, tz: tzinfo | str | None = None,
                 max_turns: int = 20, max_conversations: int = 1000, site: SiteDescription | None = None) -> None:
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self._now = now or (lambda: datetime.now(timezone.utc))
        self.memory = ConversationMemory(max_turns, max_conversations)
        self.tools = ToolRegistry()
        self.tools.register(Tool(
            "get_time", self._getTime, "The current date and time, optionally in an IANA time zone.",
            {"timezone": {"type": "string", "description": "IANA zone, e.g. Europe/Paris"}},
        ))
        # S3's website tools (search_site, navigate_to_page, get_site_info), offline.
        self.site = site if site is not None else SiteDescription.load(None)
        for tool in SiteTools(self.site).tools():
            self.tools.register(tool)
        self._rules: list[tuple[str, re.Pattern[str], Callable[[re.Match[str], AgentContext], Any]]] = [
            ("greeting", _phraseRule(GREETINGS + VARIANTS["greeting"]), self._greet),
            ("help", _phraseRule(HELP + VARIANTS["help"]), self._help),
            ("time", _phraseRule(TIME + VARIANTS["time"]), self._time),
            ("date", _phraseRule(DATE + VARIANTS["date"]), self._date),
            ("recall_user", _phraseRule(RECALL_USER), self._recallUser),
            ("recall_assistant", _phraseRule(RECALL_ASSISTANT), self._recallAssistant),
            ("thanks", _phraseRule(THANKS + VARIANTS["thanks"]), lambda m, c: "You're welcome."),
            ("goodbye", _phraseRule(GOODBYE + VARIANTS["goodbye"]), lambda m, c: "Goodbye! Talk to you soon."),
            ("navigate", NAVIGATE, self._navigate),
            ("search", re.compile(r"^(?:search|search the site|search this site) for (?P<query>.+)$"), self._search),
            ("site_info", re.compile(r"^tell me about (?:this site|the site|your (?P<topic>[\w ]+))$"), self._siteInfo),
            ("echo", re.compile(r"^(?:repeat after me|say)\s+(?P<words>.+)$"), lambda m, c: m.group("words")),
        ]

    @classmethod
    def fromOptions(cls, options: Mapping[str, Any]) -> "RulesAgent":
        """Options: ``timezone`` (IANA name), ``max_turns``, ``max_conversations``, ``site`` (site description file)."""
        return cls(tz=options.get("timezone"), max_turns=int(options.get("max_turns", 20)),
                   max_conversations=int(options.get("max_conversations", 1000)),
                   site=SiteDescription.load(options.get("site") or None))

    def phrases(self) -> list[str]:
        fixed = GREETINGS + HELP + TIME + DATE + RECALL_USER + RECALL_ASSISTANT + THANKS + GOODBYE
        echoes = tuple(f"{prefix} {example}" for prefix in ECHO_PREFIXES for example in ECHO_EXAMPLES)
        site = tuple(f"{verb} the {page.name} page" for page in self.site.pages for verb in ("go to", "take me to"))
        site += ("tell me about this site",) + tuple(f"tell me about your {topic}" for topic in self.site.info)
        return list(fixed + echoes + site)

    def respond(self, text: str, context: AgentContext) -> Deferred:
        return Deferred.fromCoroutine(self._respond(text, context))

    async def _respond(self, text: str, context: AgentContext) -> AgentReply:
        heard = _normalize(text)
        firstEvent = len(context.events)
        reply, rule = None, "fallback"
        for name, pattern, answer in self._rules:
            match = pattern.match(heard)
            if match:
                rule = name
                try:
                    result = answer(match, context)
                    reply = result if isinstance(result, str) else await result
                except ToolError as e:
                    reply = f"Sorry, I couldn't do that: {e.message}"
                break
        if reply is None:
            reply = (_sentence(f"Sorry, I don't know how to help with that. I heard: {text.strip()}") if heard
                     else "I didn't hear anything. Say help to hear what I can do.")
        self.memory.add(context.key, "user", text.strip())
        self.memory.add(context.key, "assistant", reply)
        self.log.debug("rule {rule} answered {heard!r} in conversation {conversation}", rule=rule, heard=heard,
                       conversation=context.key)
        return AgentReply(reply, tuple(context.events[firstEvent:]), {"rule": rule, "agent": self.name})

    # -- the tool ---------------------------------------------------------------------------------

    def _getTime(self, timezone: str | None = None) -> dict[str, str]:
        try:
            zone = ZoneInfo(timezone) if timezone else self.tz
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(f"unknown time zone {timezone!r}") from None
        now = self._now().astimezone(zone)
        return {
            "iso": now.isoformat(timespec="seconds"),
            "time": now.strftime("%I:%M %p").lstrip("0"),
            "date": now.strftime("%A, %B ") + str(now.day) + now.strftime(", %Y"),
            "timezone": now.tzname() or "",
        }

    # -- the rules --------------------------------------------------------------------------------

    def _greet(self, match: re.Match[str], context: AgentContext) -> str:
        return "Hello! I'm your voice assistant. Say help to hear what I can do."

    def _help(self, match: re.Match[str], context: AgentContext) -> str:
        return ("I can greet you, tell you the time and the date, repeat after you when you say "
                "repeat after me, and tell you what you said last. Try: what time is it.")

    async def _time(self, match: re.Match[str], context: AgentContext) -> str:
        now = await self.tools.call("get_time", {}, context)
        return f"It is {now['time']}."

    async def _date(self, match: re.Match[str], context: AgentContext) -> str:
        now = await self.tools.call("get_time", {}, context)
        return f"Today is {now['date']}."

    async def _navigate(self, match: re.Match[str], context: AgentContext) -> str:
        page = await self.tools.call("navigate_to_page", {"page": match.group("page")}, context)
        return f"Opening the {page['title']} page."

    async def _search(self, match: re.Match[str], context: AgentContext) -> str:
        found = await self.tools.call("search_site", {"query": match.group("query")}, context)
        titles = [r["title"] for r in found["results"]]
        return f"I found: {', '.join(titles)}." if titles else "I found nothing about that."

    async def _siteInfo(self, match: re.Match[str], context: AgentContext) -> str:
        topic = match.group("topic")
        info = await self.tools.call("get_site_info", {"topic": topic} if topic else {}, context)
        return _sentence(info["text"])

    def _recallUser(self, match: re.Match[str], context: AgentContext) -> str:
        last = self.memory.last(context.key, "user")
        return _sentence(f"You said: {last.text}") if last else "You haven't said anything before that."

    def _recallAssistant(self, match: re.Match[str], context: AgentContext) -> str:
        last = self.memory.last(context.key, "assistant")
        return last.text if last else "I haven't said anything yet."
