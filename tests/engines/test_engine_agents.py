"""The rules and echo agents, their tool mechanism, and the spoken loop espeak -> STT -> agent."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface.verify import verifyObject

from txvoice.engines.agent_echo import EchoAgent
from txvoice.engines.agent_rules import ConversationMemory, RulesAgent
from txvoice.engines.interfaces import AgentContext, AgentReply, IAgent, Tool, ToolError, ToolRegistry

NOON = datetime(2025, 3, 14, 15, 4, 5, tzinfo=timezone.utc)


@pytest.fixture
def agent():
    return RulesAgent(now=lambda: NOON, tz="UTC")


def ask(agent, text, conversation="c1", **kw):
    """Answer ``text``; the rules agent's tools are synchronous, so the Deferred has fired."""
    context = AgentContext(conversation_id=conversation, **kw)
    result = defer.maybeDeferred(agent.respond, text, context)
    replies = []
    result.addCallback(replies.append)
    assert replies, "the reply should be ready at once"
    return replies[0]


def test_provides_interface(agent):
    assert verifyObject(IAgent, agent)
    assert verifyObject(IAgent, EchoAgent())


@pytest.mark.parametrize("text", ["hello", "Hi there!", "good morning", "Hey!"])
def test_greeting(agent, text):
    reply = ask(agent, text)
    assert reply.text.startswith("Hello!") and reply.metadata["rule"] == "greeting"


def test_help_lists_what_it_can_do(agent):
    text = ask(agent, "help").text
    for ability in ("time", "date", "repeat after me", "what you said"):
        assert ability in text


def test_time_goes_through_the_get_time_tool(agent):
    heard = []
    reply = ask(agent, "what time is it", listener=heard.append)
    assert reply.text == "It is 3:04 PM."
    assert [e.type for e in reply.events] == ["tool_call", "tool_result"]
    call, result = reply.events
    assert call.data == {"name": "get_time", "arguments": {}}
    assert result.data["name"] == "get_time" and result.data["result"]["iso"] == "2025-03-14T15:04:05+00:00"
    assert list(reply.events) == heard  # the listener heard them as they happened
    assert result.as_dict()["type"] == "tool_result"


def test_date_and_time_zone(agent):
    assert ask(agent, "what is the date today").text == "Today is Friday, March 14, 2025."
    tokyo = RulesAgent(now=lambda: NOON, tz="Asia/Tokyo")
    assert ask(tokyo, "what day is it").text == "Today is Saturday, March 15, 2025."


@pytest.mark.parametrize(("text", "echo"), [
    ("repeat after me hello world", "hello world"),
    ("Say: the weather is nice today", "the weather is nice today"),
])
def test_echo(agent, text, echo):
    reply = ask(agent, text)
    assert reply.text == echo and reply.metadata["rule"] == "echo"


def test_context_per_conversation(agent):
    assert ask(agent, "what did i say").text == "You haven't said anything before that."
    ask(agent, "good morning", conversation="a")
    ask(agent, "repeat after me good night", conversation="b")
    assert ask(agent, "what did I say?", conversation="a").text == "You said: good morning."
    assert ask(agent, "what did i just say", conversation="a").text == "You said: what did I say?"
    assert ask(agent, "what did i say", conversation="b").text == "You said: repeat after me good night."
    assert ask(agent, "say that again", conversation="b").text == "You said: repeat after me good night."
    history = agent.memory.history("b")
    assert [t.role for t in history] == ["user", "assistant"] * 3
    # No conversation id: the session is the conversation.
    ask(agent, "thank you", conversation=None, session_id="s9")
    assert agent.memory.last("s9", "user").text == "thank you"


def test_fallback_repeats_what_it_heard(agent):
    reply = ask(agent, "book me a flight to Paris")
    assert reply.metadata["rule"] == "fallback"
    assert "Sorry" in reply.text and "book me a flight to Paris" in reply.text
    assert "didn't hear" in ask(agent, "  ").text


def test_every_phrase_it_offers_is_understood(agent):
    for phrase in agent.phrases():
        assert ask(agent, phrase).metadata["rule"] != "fallback", phrase


def test_memory_is_bounded():
    memory = ConversationMemory(max_turns=3, max_conversations=2)
    for i in range(5):
        memory.add("x", "user", str(i))
    assert [t.text for t in memory.history("x")] == ["2", "3", "4"]
    memory.add("y", "user", "y")
    memory.add("z", "user", "z")
    assert memory.history("x") == [] and memory.last("z", "user").text == "z"


def test_echo_agent():
    agent = EchoAgent()
    assert agent.respond(" what time is it ", AgentContext()) == AgentReply("what time is it", (), {"agent": "echo"})
    assert agent.phrases() is None


# -- tools -----------------------------------------------------------------------------------------


def test_tool_errors_are_reported(agent):
    context = AgentContext()
    failure = []
    agent.tools.call("launch_rocket", {}, context).addErrback(failure.append)
    assert failure[0].check(ToolError) and "get_time" in failure[0].value.message
    agent.tools.call("get_time", {"colour": "red"}, context).addErrback(failure.append)
    assert "colour" in failure[1].value.message
    agent.tools.call("get_time", {"timezone": "Mars/Olympus"}, context).addErrback(failure.append)
    assert "Mars/Olympus" in failure[2].value.message
    assert [e.type for e in context.events] == ["tool_call", "tool_error"] * 3
    assert "get_time" in [t["name"] for t in agent.tools.describe()]


@pytest_twisted.inlineCallbacks
def test_asynchronous_tool_and_cancellation():
    pending: list[defer.Deferred] = []
    tools = ToolRegistry()

    @tools.tool(parameters={"city": {"type": "string"}})
    def weather(city: str) -> defer.Deferred:
        """The weather in a city."""
        d = defer.Deferred()
        pending.append(d)
        return d

    assert "weather" in tools and tools.describe()[0]["description"] == "The weather in a city."
    context = AgentContext()
    d = tools.call("weather", {"city": "Lyon"}, context)
    pending[0].callback({"sky": "clear"})
    assert (yield d) == {"sky": "clear"}
    d = tools.call("weather", {"city": "Lyon"}, context)
    d.cancel()
    with pytest.raises(defer.CancelledError):
        yield d
    assert [e.type for e in context.events] == ["tool_call", "tool_result", "tool_call", "tool_cancelled"]


@pytest_twisted.inlineCallbacks
def test_cancelling_a_reply_cancels_its_tool_call():
    agent = RulesAgent()
    stuck = defer.Deferred()
    agent.tools.register(Tool("get_time", lambda: stuck, parameters={}))
    context = AgentContext(conversation_id="q")
    d = agent.respond("what time is it", context)
    assert not d.called
    d.cancel()
    with pytest.raises(defer.CancelledError):
        yield d
    assert stuck.called  # the tool's Deferred was cancelled too
    assert [e.type for e in context.events] == ["tool_call", "tool_cancelled"]
    assert agent.memory.history("q") == []


# -- the spoken loop -------------------------------------------------------------------------------


@pytest.mark.parametrize(("spoken", "answer"), [
    ("what time is it", "It is 3:04 PM."),
    ("repeat after me i like green apples", "i like green apples"),
    ("what can you do", "I can greet you"),
])
def test_spoken_question_is_answered(agent, stt, speak, frames, spoken, answer):
    stream = stt.startStream(phrases=agent.phrases())
    for frame in frames(speak(spoken)):
        stream.feed(frame)
    transcript = stream.finish()
    assert transcript.text == spoken
    assert ask(agent, transcript.text).text.startswith(answer)


def test_a_failing_tool_gives_a_polite_answer():
    agent = RulesAgent()

    def broken():
        raise ToolError("the clock is unplugged")

    agent.tools.register(Tool("get_time", broken, parameters={}))
    reply = ask(agent, "what time is it")
    assert reply.text == "Sorry, I couldn't do that: the clock is unplugged"
    assert [e.type for e in reply.events] == ["tool_call", "tool_error"]


def test_site_tools_navigate_search_and_info(tmp_path):
    """S3's tools over a site description file: "go to the pricing page" calls navigate_to_page."""
    import json

    from txvoice.engines.agent_rules import RulesAgent
    from txvoice.engines.interfaces import AgentContext

    site = tmp_path / "site.json"
    site.write_text(json.dumps({"name": "Acme", "description": "Anvils.", "pages": [
        {"name": "pricing", "path": "/plans", "title": "Plans and pricing", "keywords": ["cost"]}],
        "info": {"hours": "Always open."}}))
    agent = RulesAgent.fromOptions({"site": str(site)})
    assert "go to the pricing page" in agent.phrases()
    context = AgentContext(session_id="s")
    reply = agent.respond("Go to the pricing page.", context).result
    assert [e.type for e in reply.events] == ["tool_call", "tool_result"]
    assert reply.events[1].data["result"]["path"] == "/plans" and reply.events[1].data["name"] == "navigate_to_page"
    assert agent.respond("search for cost", AgentContext(session_id="s")).result.text == "I found: Plans and pricing."
    assert agent.respond("tell me about your hours", AgentContext(session_id="s")).result.text == "Always open."
    missing = agent.respond("go to the moon page", AgentContext(session_id="s")).result
    assert missing.events[-1].type == "tool_error" and "pricing" in missing.text
