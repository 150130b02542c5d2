"""LLM enrichment of prompts: N rephrasings through any OpenAI-compatible endpoint, each verified.

The model is asked for a JSON object ``{"rephrasings": [{"prompt", "referring", "edit"}]}`` where
"referring" and the "edit" items are pieces copied from "prompt". **Spans are always recomputed
here** by locating those pieces in the rephrasing (exact, then case-insensitive); offsets a model
might send are never trusted. A model that gives only "prompt" gets its referring part located
from the original referring text, and its edit part is the rest of the prompt.

Every rephrasing is then checked (`check_rephrasing`): spans exact and disjoint, the referring part
still holds every identifying word of the original (colour, location, ordinal and size words, the
head noun), the edit part still holds the target (remove: a removal verb), and it differs from the
original and from the others. Failures are dropped with the reason logged and returned; when none
survives, the original prompt stands. Survivors are marked ``source="llm"``, ``reviewed=False``.

Transport: `openai.OpenAI(max_retries=0)` with our own bounded retries, so every failure mode is
handled in one place: time-outs, connection errors, HTTP 5xx and 429 (its Retry-After honoured up to
`max_retry_after`; a longer wait gives up at once), malformed JSON and empty answers are retried
with exponential back-off, then raise `LLMError`; other HTTP errors (401, 404, 400) fail at once.
Successful answers are cached on disk under a hash of (model, messages, settings), written
atomically, so rebuilding a dataset costs no second call. `enrich_batch` never raises for one item.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from refcoco_edit.errors import InputError, RefcocoEditError
from refcoco_edit.io import atomic_write_json
from refcoco_edit.settings import cache_dir
from refcoco_edit.text.enrichment import (
    Enrichment,
    Rejection,
    Rephraser,
    check_rephrasing,
    locate_parts,
)
from refcoco_edit.text.prompts import Prompt
from refcoco_edit.text.rephrase import RuleRephraser
from refcoco_edit.text.subjects import key_words, tokens

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"
CACHE_VERSION = 2  # bump when the request, the key or the answer format changes
_PLACEHOLDER_KEY = "not-needed"  # local OpenAI-compatible servers accept any key; the client needs one
class LLMError(RefcocoEditError):
    """The LLM endpoint could not give a usable answer (after the bounded retries)."""


def default_cache_dir() -> Path:
    """`<refcoco-edit cache>/llm`."""
    return cache_dir() / "llm"


@dataclass(frozen=True)
class LLMSettings:
    """Where and how to ask. `base_url`/`api_key` default to OPENAI_BASE_URL/OPENAI_API_KEY."""

    model: str = DEFAULT_MODEL
    base_url: str | None = None
    api_key: str | None = None
    temperature: float = 0.8
    timeout: float = 60.0  # seconds per HTTP request
    max_attempts: int = 4
    backoff: float = 1.0  # first wait between attempts; doubles each time
    max_backoff: float = 30.0
    max_retry_after: float = 60.0  # longest Retry-After honoured; a longer one gives up at once
    cache_dir: Path | None = None  # None: default_cache_dir()
    use_cache: bool = True

    def resolved_base_url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def resolved_api_key(self) -> str:
        key = self.api_key or os.environ.get("OPENAI_API_KEY")
        if key:
            return key
        if self.resolved_base_url():
            return _PLACEHOLDER_KEY
        raise LLMError("no LLM configured: set OPENAI_API_KEY (and OPENAI_BASE_URL or --llm-base-url for a "
                       "local OpenAI-compatible server)")

    def cache_folder(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


def llm_configured(base_url: str | None = None, model: str | None = None) -> bool:
    """Whether enrichment should go to an LLM: a base URL or model was given, or OPENAI_BASE_URL is set."""
    return bool(base_url or model or os.environ.get("OPENAI_BASE_URL"))


# ------------------------------------------------------------------------------ cache


class AnswerCache:
    """JSON answers on disk, one file per key (`<dir>/<key[:2]>/<key>.json`), written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(material: dict[str, Any]) -> str:
        blob = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self.path(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            content = record["content"]
            if not isinstance(content, str):
                raise ValueError("content is not text")
            return content
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable LLM cache entry %s: %s", path, exc)
            return None

    def put(self, key: str, content: str, material: dict[str, Any]) -> None:
        path = self.path(key)
        try:
            atomic_write_json(path, {"request": material, "content": content, "created": time.time()})
        except OSError as exc:
            log.warning("could not write LLM cache entry %s: %s", path, exc)


# ------------------------------------------------------------------------------ client


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds a 429/503 answer asks to wait (`retry-after-ms`, or `retry-after` as seconds or a date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_json_answer(content: str) -> Any:
    """The JSON in a model's answer, tolerating a ```json fence around it; ValueError otherwise."""
    text = content.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.S)
    if fence:
        text = fence.group(1)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from None


class LLMClient:
    """Chat completions that must answer JSON, with bounded retries and a disk cache."""

    def __init__(self, settings: LLMSettings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        import openai

        self.settings = settings
        self._openai = openai
        self._sleep = sleep
        self._client = openai.OpenAI(
            base_url=settings.resolved_base_url(), api_key=settings.resolved_api_key(),
            max_retries=0, timeout=settings.timeout,
        )
        self.cache = AnswerCache(settings.cache_folder()) if settings.use_cache else None
        self.http_calls = 0

    def _where(self) -> str:
        return f"LLM {self.settings.model!r} at {self.settings.resolved_base_url() or 'api.openai.com'}"

    def complete_json(self, messages: list[dict[str, str]], validate: Callable[[Any], None] | None = None
                      ) -> tuple[Any, bool]:
        """(parsed JSON answer, came from cache). `validate` may raise ValueError to reject a shape."""
        s = self.settings
        # the endpoint is part of the key: two servers may serve different models under one name
        material = {"v": CACHE_VERSION, "base_url": s.resolved_base_url(), "model": s.model, "messages": messages,
                    "temperature": s.temperature, "response_format": "json_object"}
        key = AnswerCache.key(material)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                try:
                    data = parse_json_answer(cached)
                    if validate:
                        validate(data)
                    return data, True
                except ValueError:
                    log.warning("cached LLM answer %s no longer parses; asking again", key[:12])
        last = "no attempt made"
        for attempt in range(1, max(1, s.max_attempts) + 1):
            wait: float | None = None
            try:
                self.http_calls += 1
                resp = self._client.chat.completions.create(
                    model=s.model, messages=messages, temperature=s.temperature,
                    response_format={"type": "json_object"},
                )
            except self._openai.RateLimitError as exc:
                wait = retry_after_seconds(getattr(exc.response, "headers", None))
                if wait is not None and wait > s.max_retry_after:
                    raise LLMError(f"{self._where()}: rate limited (HTTP 429); the server asks to wait {wait:.0f} s, "
                                   f"more than the {s.max_retry_after:.0f} s allowed (max_retry_after)") from None
                last = "rate limited (HTTP 429)"
            except self._openai.APITimeoutError:
                last = f"no answer within {s.timeout:g} s (timeout)"
            except self._openai.APIConnectionError as exc:
                last = f"connection failed: {exc}"
            except self._openai.APIStatusError as exc:
                if exc.status_code >= 500 or exc.status_code in (408, 409):
                    wait = retry_after_seconds(getattr(exc.response, "headers", None))
                    if wait is not None:
                        wait = min(wait, s.max_retry_after)
                    last = f"HTTP {exc.status_code}"
                else:
                    raise LLMError(f"{self._where()}: HTTP {exc.status_code}: {_short(exc.message)}") from None
            except self._openai.OpenAIError as exc:  # e.g. a body that is not a chat completion
                last = f"unusable response: {_short(str(exc))}"
            except (ValueError, TypeError, AttributeError) as exc:  # the client chokes on a non-JSON body
                last = f"malformed response body: {type(exc).__name__}: {_short(str(exc))}"
            else:
                content = _first_content(resp)
                if content is None or not content.strip():
                    last = "empty answer (no choices or no content)"
                else:
                    try:
                        data = parse_json_answer(content)
                        if validate:
                            validate(data)
                    except ValueError as exc:
                        last = f"malformed answer: {exc}"
                    else:
                        if self.cache is not None:
                            self.cache.put(key, content, material)
                        return data, False
            if attempt < s.max_attempts:
                delay = wait if wait is not None else min(s.max_backoff, s.backoff * 2 ** (attempt - 1))
                log.info("%s: attempt %d/%d failed (%s); retrying in %.1f s",
                         self._where(), attempt, s.max_attempts, last, delay)
                self._sleep(delay)
        raise LLMError(f"{self._where()}: gave up after {s.max_attempts} attempt(s); last error: {last}")


def _first_content(resp: Any) -> str | None:
    if isinstance(resp, str):
        return None
    choices = getattr(resp, "choices", None)
    if not choices:
        return None
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    return content if isinstance(content, str) else None


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


SYSTEM_PROMPT = (
    "You rephrase instructions for editing one object in a photo. An instruction has a referring part "
    "(the words that pick out the object) and an edit part (what to do to it). Write the requested number "
    "of different rephrasings that keep the meaning exactly: the same object, the same edit, the same target. "
    "In the referring part keep every one of these words: {keys}. {target_rule} Do not add objects, colours, "
    "positions or counts. Reply with one JSON object and nothing else, of the form "
    '{{"rephrasings": [{{"prompt": "...", "referring": "...", "edit": ["...", "..."]}}]}}, where "referring" '
    'is the referring part and "edit" lists the pieces of the edit part, each copied character for character '
    'from "prompt".'
)


class LLMRephraser:
    """Rephrasings through an OpenAI-compatible chat endpoint, verified before use."""

    def __init__(self, settings: LLMSettings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.client = LLMClient(settings, sleep=sleep)

    def messages(self, prompt: Prompt, n: int, category: str | None = None,
                 extra_nouns: Iterable[str] = ()) -> list[dict[str, str]]:
        keys = key_words(prompt.referring_text, category, extra_nouns)
        if prompt.edit_type == "remove":
            target_rule = "The edit part must still say to remove the object."
        else:
            target_rule = f"In the edit part keep the target: {prompt.target!r}."
        system = SYSTEM_PROMPT.format(keys=", ".join(repr(k) for k in keys) or "(none)", target_rule=target_rule)
        user = json.dumps({"instruction": prompt.prompt, "referring_part": prompt.referring_text,
                           "edit_part": prompt.edit_text, "edit_type": prompt.edit_type, "target": prompt.target,
                           "number_of_rephrasings": n}, ensure_ascii=False)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def rephrase(self, prompt: Prompt, n: int, *, category: str | None = None,
                 extra_nouns: Iterable[str] = ()) -> Enrichment:
        """Ask for n rephrasings; raises LLMError when the endpoint gives no usable answer."""
        if n < 1:
            raise InputError("the number of rephrasings must be at least 1")
        messages = self.messages(prompt, n, category, extra_nouns)
        data, cached = self.client.complete_json(messages, validate=_answer_items)
        out = Enrichment(prompt, cached=cached)
        seen: set[str] = set()
        for item in _answer_items(data):
            text, referring, edit = _item_parts(item)
            try:
                new = locate_parts(text, referring, edit, prompt, "llm")
            except ValueError as exc:
                reason = str(exc)
            else:
                reason = check_rephrasing(new, prompt, seen, category, extra_nouns)
                if reason is None:
                    if len(out.rephrasings) < n:
                        out.rephrasings.append(new)
                        seen.add(" ".join(tokens(new.prompt)))
                    continue
            log.info("dropped LLM rephrasing %r: %s", text, reason)
            out.rejected.append(Rejection(text, reason))
        if not out.rephrasings:
            log.warning("no LLM rephrasing of %r survived the checks; the original stands", prompt.prompt)
        return out


def _answer_items(data: Any) -> list[Any]:
    """The list of rephrasings in an answer; ValueError when the answer has none (then it is retried)."""
    if isinstance(data, dict):
        for key in ("rephrasings", "paraphrases", "prompts", "results"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        raise ValueError('expected {"rephrasings": [...]}')
    if not data:
        raise ValueError("the answer lists no rephrasing")
    return data


def _item_parts(item: Any) -> tuple[str, str | None, list[str] | None]:
    if isinstance(item, str):
        return item, None, None
    if not isinstance(item, dict):
        return json.dumps(item), None, None
    text = item.get("prompt") or item.get("text") or item.get("instruction") or ""
    referring = item.get("referring") or item.get("referring_part")
    edit = item.get("edit", item.get("edit_part"))
    if isinstance(edit, str):
        edit = [edit]
    if not isinstance(edit, list) or not all(isinstance(e, str) for e in edit):
        edit = None
    return (text if isinstance(text, str) else ""), (referring if isinstance(referring, str) else None), edit


def enrich_batch(prompts: Sequence[Prompt], n: int, rephraser: Rephraser, *,
                 categories: Sequence[str | None] | None = None, extra_nouns: Iterable[str] = (),
                 progress: bool = False) -> list[Enrichment]:
    """Enrich every prompt; an item whose call fails gets `error` set and keeps its original."""
    extra = list(extra_nouns)
    items: Iterable[int] = range(len(prompts))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="enrich", unit="prompt", disable=None)
    out: list[Enrichment] = []
    for i in items:
        cat = categories[i] if categories is not None else None
        try:
            out.append(rephraser.rephrase(prompts[i], n, category=cat, extra_nouns=extra))
        except RefcocoEditError as exc:
            log.warning("enrichment of %r failed: %s", prompts[i].prompt, exc)
            out.append(Enrichment(prompts[i], error=str(exc)))
    return out


def make_rephraser(settings: LLMSettings | None, seed: int = 0, *, sleep: Callable[[float], None] = time.sleep
                   ) -> Rephraser:
    """The LLM rephraser when settings are given, else the offline rule-based one."""
    if settings is None:
        return RuleRephraser(seed)
    return LLMRephraser(settings, sleep=sleep)


__all__ = ["AnswerCache", "Enrichment", "LLMClient", "LLMError", "LLMRephraser", "LLMSettings", "Rejection",
           "check_rephrasing", "default_cache_dir", "enrich_batch", "llm_configured", "locate_parts",
           "make_rephraser", "parse_json_answer", "retry_after_seconds"]
