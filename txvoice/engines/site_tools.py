"""
S3's website tools, offline: ``search_site(query)``, ``navigate_to_page(page, path?)`` and
``get_site_info(topic?)``, answered from a site description file instead of a live site.

The file is JSON (see ``doc/dialects.md``, "Site description file")::

    {"name": "Example Co", "description": "What the site is about.",
     "pages": [{"name": "pricing", "path": "/pricing", "title": "Pricing",
                "summary": "Plans and prices.", "keywords": ["plans", "cost"]}],
     "info": {"hours": "We are open nine to five.", "contact": "Write to hello@example.com."}}

Without a file the agent uses :data:`DEFAULT_SITE`, so "go to the pricing page" works on a
default daemon.  Tool results are JSON-like dicts; ``navigate_to_page``'s result is what the
``/voice-ws`` dialect sends as its ``navigation`` message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from txvoice.engines.interfaces import Tool, ToolError

DEFAULT_SITE: dict[str, Any] = {
    "name": "this site",
    "description": "A demonstration site served by txvoice.",
    "pages": [
        {"name": "home", "path": "/", "title": "Home", "summary": "The start page.", "keywords": ["start", "main"]},
        {"name": "pricing", "path": "/pricing", "title": "Pricing", "summary": "Plans and prices.",
         "keywords": ["plans", "price", "cost"]},
        {"name": "features", "path": "/features", "title": "Features", "summary": "What the product does.",
         "keywords": ["product"]},
        {"name": "contact", "path": "/contact", "title": "Contact", "summary": "How to reach us.",
         "keywords": ["email", "phone"]},
        {"name": "about", "path": "/about", "title": "About", "summary": "Who we are.", "keywords": ["team"]},
        {"name": "support", "path": "/support", "title": "Support", "summary": "Help and answers.",
         "keywords": ["help", "docs"]},
    ],
    "info": {"hours": "We are open from nine to five, Monday to Friday.",
             "contact": "You can reach us through the contact page."},
}


@dataclass(frozen=True, slots=True)
class Page:
    name: str
    path: str
    title: str = ""
    summary: str = ""
    keywords: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"page": self.name, "path": self.path, "title": self.title or self.name.title(),
                "summary": self.summary}


@dataclass(frozen=True)
class SiteDescription:
    """A site's pages and facts, as the tools know them."""

    name: str
    description: str
    pages: tuple[Page, ...]
    info: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SiteDescription":
        pages = []
        for entry in data.get("pages", ()):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                raise ValueError("every page needs a string 'name'")
            name = entry["name"].strip().lower()
            pages.append(Page(name, str(entry.get("path") or "/" + name), str(entry.get("title", "")),
                              str(entry.get("summary", "")), tuple(str(k).lower() for k in entry.get("keywords", ()))))
        info = data.get("info", {})
        if not isinstance(info, Mapping):
            raise ValueError("'info' must be an object of topic: text")
        return cls(str(data.get("name", "this site")), str(data.get("description", "")), tuple(pages),
                   {str(k).lower(): str(v) for k, v in info.items()})

    @classmethod
    def load(cls, path: str | Path | None) -> "SiteDescription":
        """The file at ``path`` (JSON), or :data:`DEFAULT_SITE` when ``path`` is empty."""
        if not path:
            return cls.from_dict(DEFAULT_SITE)
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def page(self, name: str) -> Page | None:
        wanted = re.sub(r"\b(the|page)\b", " ", _words(name)).split()
        key = " ".join(wanted)
        for page in self.pages:
            if page.name == key or page.title.lower() == key:
                return page
        for page in self.pages:
            if key and (key in page.keywords or page.name in wanted):
                return page
        return None


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^\w ]+", " ", text.lower()).split())


class SiteTools:
    """The three tools over one :class:`SiteDescription`."""

    def __init__(self, site: SiteDescription) -> None:
        self.site = site

    def tools(self) -> list[Tool]:
        return [
            Tool("search_site", self.search_site, "Search the website's pages for a query.",
                 {"query": {"type": "string", "description": "What to look for"}}),
            Tool("navigate_to_page", self.navigate_to_page, "Send the user's browser to a page of the site.",
                 {"page": {"type": "string", "description": "Page name, e.g. pricing"},
                  "path": {"type": "string", "description": "URL path, when known"}}),
            Tool("get_site_info", self.get_site_info, "Facts about the site, optionally on one topic.",
                 {"topic": {"type": "string", "description": "e.g. hours, contact"}}),
        ]

    def search_site(self, query: str) -> dict[str, Any]:
        terms = set(_words(query).split()) - {"the", "a", "page", "for"}
        hits = []
        for page in self.site.pages:
            text = set(_words(" ".join((page.name, page.title, page.summary, *page.keywords))).split())
            score = len(terms & text)
            if score:
                hits.append((score, page))
        hits.sort(key=lambda h: -h[0])
        return {"query": query, "results": [p.as_dict() for _, p in hits[:5]]}

    def navigate_to_page(self, page: str, path: str | None = None) -> dict[str, Any]:
        found = self.site.page(page)
        if found is None:
            if path:
                return {"page": _words(page), "path": path, "title": page, "summary": ""}
            known = ", ".join(p.name for p in self.site.pages)
            raise ToolError(f"there is no {page} page; pages: {known}", tool="navigate_to_page")
        result = found.as_dict()
        if path:
            result["path"] = path
        return result

    def get_site_info(self, topic: str | None = None) -> dict[str, Any]:
        if topic:
            key = _words(topic)
            if key in self.site.info:
                return {"topic": key, "text": self.site.info[key]}
            page = self.site.page(key)
            if page is not None:
                return {"topic": key, "text": page.summary or page.title}
            raise ToolError(f"I know nothing about {topic}", tool="get_site_info")
        return {"topic": None, "text": f"{self.site.name}: {self.site.description}".strip(": ")}
