"""LLM enrichment against a real OpenAI-compatible HTTP server on loopback, through the real client."""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from refcoco_edit.text.llm import (
    AnswerCache,
    LLMError,
    LLMRephraser,
    LLMSettings,
    check_rephrasing,
    default_cache_dir,
    enrich_batch,
    locate_parts,
    parse_json_answer,
    retry_after_seconds,
)
from refcoco_edit.text.prompts import compose
from tests.refcoco_edit import llm_server as srv


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    s = srv.ScriptedServer().start()
    yield s
    s.stop()


@pytest.fixture
def zebra():
    return compose("zebra on the left", "replace", "giraffe", template="<replace> {ref} <with {target_np}>")


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make(server, tmp_path: Path, sleeps: Sleeps | None = None, **kw) -> LLMRephraser:
    settings = LLMSettings(model="test-model", cache_dir=tmp_path / "cache",
                           **{"base_url": server.base_url, "timeout": 5.0, "max_attempts": 3, **kw})
    return LLMRephraser(settings, sleep=sleeps if sleeps is not None else Sleeps())


def good_answer(req: dict, user: dict) -> dict:
    ref, target = user["referring_part"], user["target"]
    return {"rephrasings": [
        {"prompt": f"swap {ref} for a {target}", "referring": ref, "edit": ["swap", f"for a {target}"]},
        {"prompt": f"Please turn {ref} into a {target}.", "referring": ref, "edit": ["turn", f"into a {target}"]},
        f"could you {user['instruction']}",  # a bare string: parts located from the original
    ]}


def independent_spans_ok(p) -> bool:
    pieces = [(s, e) for s, e in p.referring_spans + p.edit_spans]
    pieces.sort()
    disjoint = all(e1 <= s2 for (_, e1), (s2, _) in zip(pieces, pieces[1:]))
    texts = (" ".join(p.prompt[s:e] for s, e in p.referring_spans) == p.referring_text
             and " ".join(p.prompt[s:e] for s, e in p.edit_spans) == p.edit_text)
    return disjoint and texts and all(p.prompt[s:e].strip() == p.prompt[s:e] for s, e in pieces)


def test_good_answers_are_verified_and_unreviewed(server, tmp_path, zebra) -> None:
    server.script = [srv.dynamic(good_answer)]
    out = make(server, tmp_path).rephrase(zebra, 3)
    assert out.error is None and not out.cached and out.rejected == []
    assert [p.prompt for p in out.rephrasings] == [
        "swap the zebra on the left for a giraffe",
        "Please turn the zebra on the left into a giraffe.",
        "could you replace the zebra on the left with a giraffe",
    ]
    for p in out.rephrasings:
        assert p.source == "llm" and p.reviewed is False
        assert p.referring_text == "the zebra on the left" and "giraffe" in p.edit_text
        assert independent_spans_ok(p)
    # the bare string: edit part is the rest of the prompt
    assert out.rephrasings[2].edit_text == "could you replace with a giraffe"
    # what went over the wire: the real client, JSON mode, the model, the words to keep
    (req,) = server.requests
    body = req["body"]
    assert req["path"] == "/v1/chat/completions" and body["model"] == "test-model"
    assert body["response_format"] == {"type": "json_object"}
    assert "'left'" in body["messages"][0]["content"] and "'zebra'" in body["messages"][0]["content"]
    assert json.loads(body["messages"][1]["content"])["number_of_rephrasings"] == 3


def test_answers_that_drop_referring_words_are_rejected(server, tmp_path, zebra) -> None:
    server.script = [srv.answer({"rephrasings": [
        {"prompt": "replace the zebra with a giraffe", "referring": "the zebra", "edit": ["replace", "with a giraffe"]},
        {"prompt": "replace the left animal with a giraffe", "referring": "the left animal",
         "edit": ["replace", "with a giraffe"]},
        {"prompt": "replace the zebra on the left with a horse", "referring": "the zebra on the left",
         "edit": ["replace", "with a horse"]},
        {"prompt": "replace the zebra on the left with a giraffe", "referring": "the zebra on the left"},
        {"prompt": "swap it for a giraffe", "referring": "it", "edit": ["swap", "for a giraffe"]},
        {"prompt": "swap the zebra on the left for a giraffe", "referring": "the zebra on the left",
         "edit": ["exchange"]},
    ]})]
    out = make(server, tmp_path).rephrase(zebra, 3)
    reasons = [r.reason for r in out.rejected]
    assert out.rephrasings == [] and out.prompts == [zebra]  # none survived: the original stands
    assert reasons[0] == "referring part lost 'left'"
    assert reasons[1] == "referring part lost 'zebra'"
    assert reasons[2] == "edit part lost the target word(s) 'giraffe'"
    assert reasons[3] == "same as the original"
    assert reasons[4] == "referring part not found in the rephrasing" or "lost" in reasons[4]
    assert "not found" in reasons[5]


def test_malformed_json_is_retried_then_succeeds(server, tmp_path, zebra) -> None:
    sleeps = Sleeps()
    server.script = [srv.content("here you go: {not json"), srv.content('{"unexpected": 1}'),
                     srv.dynamic(good_answer)]
    out = make(server, tmp_path, sleeps, backoff=0.5).rephrase(zebra, 2)
    assert len(server.requests) == 3 and len(out.rephrasings) == 2
    assert sleeps == [0.5, 1.0]  # exponential back-off between the attempts


def test_malformed_json_every_time_gives_llm_error(server, tmp_path, zebra) -> None:
    server.default = srv.content("{'single': 'quotes'}")
    with pytest.raises(LLMError, match=r"gave up after 3 attempt\(s\); last error: malformed answer"):
        make(server, tmp_path).rephrase(zebra, 2)
    assert len(server.requests) == 3


def test_http_body_that_is_not_json_is_retried(server, tmp_path, zebra) -> None:
    server.script = [lambda req: (200, {}, b"<html>gateway hiccup</html>"), lambda req: (200, {}, b'{"id": 1}'),
                     srv.dynamic(good_answer)]
    assert len(make(server, tmp_path).rephrase(zebra, 1).rephrasings) == 1
    server.default = lambda req: (200, {}, b"<html>down</html>")
    with pytest.raises(LLMError, match="malformed response body"):
        make(server, tmp_path, use_cache=False).rephrase(zebra, 1)


def test_fenced_json_is_accepted(server, tmp_path, zebra) -> None:
    fenced = '```json\n{"rephrasings": ["please replace the zebra on the left with a giraffe"]}\n```'
    server.script = [srv.content(fenced)]
    out = make(server, tmp_path).rephrase(zebra, 1)
    assert [p.prompt for p in out.rephrasings] == ["please replace the zebra on the left with a giraffe"]


def test_rate_limit_honours_retry_after(server, tmp_path, zebra) -> None:
    sleeps = Sleeps()
    server.script = [srv.status(429, {"retry-after": "7"}), srv.status(429, {"retry-after-ms": "250"}),
                     srv.dynamic(good_answer)]
    out = make(server, tmp_path, sleeps).rephrase(zebra, 1)
    assert sleeps == [7.0, 0.25] and len(out.rephrasings) == 1 and len(server.requests) == 3


def test_rate_limit_longer_than_allowed_gives_up_at_once(server, tmp_path, zebra) -> None:
    sleeps = Sleeps()
    server.default = srv.status(429, {"retry-after": "3600"})
    with pytest.raises(LLMError, match="rate limited.*3600 s.*max_retry_after"):
        make(server, tmp_path, sleeps, max_retry_after=60).rephrase(zebra, 1)
    assert len(server.requests) == 1 and sleeps == []


def test_rate_limit_without_end_gives_llm_error(server, tmp_path, zebra) -> None:
    server.default = srv.status(429, {"retry-after": "0"})
    with pytest.raises(LLMError, match=r"last error: rate limited \(HTTP 429\)"):
        make(server, tmp_path).rephrase(zebra, 1)
    assert len(server.requests) == 3


def test_slow_answers_time_out_and_are_retried(server, tmp_path, zebra) -> None:
    server.script = [srv.delay(2.0, srv.dynamic(good_answer)), srv.dynamic(good_answer)]
    t0 = time.monotonic()
    out = make(server, tmp_path, timeout=0.3).rephrase(zebra, 1)
    assert len(out.rephrasings) == 1 and len(server.requests) == 2
    assert time.monotonic() - t0 < 1.9  # the client did not wait for the slow answer


def test_always_slow_gives_timeout_error(server, tmp_path, zebra) -> None:
    server.default = srv.delay(1.5, srv.dynamic(good_answer))
    with pytest.raises(LLMError, match=r"no answer within 0.2 s \(timeout\)"):
        make(server, tmp_path, timeout=0.2, max_attempts=2).rephrase(zebra, 1)


def test_server_errors_are_retried(server, tmp_path, zebra) -> None:
    server.script = [srv.status(500), srv.status(503), srv.dynamic(good_answer)]
    out = make(server, tmp_path).rephrase(zebra, 1)
    assert len(out.rephrasings) == 1 and len(server.requests) == 3
    server.default = srv.status(502)
    with pytest.raises(LLMError, match=r"last error: HTTP 502"):
        make(server, tmp_path, use_cache=False).rephrase(zebra, 1)


def test_empty_choices_and_empty_content(server, tmp_path, zebra) -> None:
    server.script = [srv.empty_choices(), srv.content("   "), srv.dynamic(good_answer)]
    assert len(make(server, tmp_path).rephrase(zebra, 1).rephrasings) == 1
    server.default = srv.empty_choices()
    with pytest.raises(LLMError, match="empty answer"):
        make(server, tmp_path, use_cache=False).rephrase(zebra, 1)


def test_client_errors_fail_at_once(server, tmp_path, zebra) -> None:
    server.default = srv.status(401, message="bad key")
    with pytest.raises(LLMError, match="HTTP 401: .*bad key"):
        make(server, tmp_path).rephrase(zebra, 1)
    assert len(server.requests) == 1


def test_unreachable_endpoint_gives_llm_error(tmp_path, zebra) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = LLMSettings(base_url=f"http://127.0.0.1:{port}/v1", cache_dir=tmp_path, max_attempts=2)
    with pytest.raises(LLMError, match="connection failed"):
        LLMRephraser(settings, sleep=Sleeps()).rephrase(zebra, 1)


def test_cache_hit_makes_no_second_call(server, tmp_path, zebra) -> None:
    server.default = srv.dynamic(good_answer)
    first = make(server, tmp_path).rephrase(zebra, 2)
    again = make(server, tmp_path).rephrase(zebra, 2)  # a new client: a rebuilt dataset
    assert len(server.requests) == 1 and not first.cached and again.cached
    assert [p.prompt for p in again.rephrasings] == [p.prompt for p in first.rephrasings]
    # other settings, other model or another n are other keys
    make(server, tmp_path, temperature=0.1).rephrase(zebra, 2)
    make(server, tmp_path).rephrase(zebra, 3)
    assert len(server.requests) == 3
    # another endpoint string is another key (two servers may serve different models under one name)
    assert not make(server, tmp_path, base_url=server.base_url.rstrip("/") + "/").rephrase(zebra, 2).cached
    assert len(server.requests) == 4
    files = list((tmp_path / "cache").rglob("*"))
    assert not [f for f in files if f.name.startswith(".tmp-")]  # atomic writes leave no temp files
    assert len([f for f in files if f.suffix == ".json"]) == 4
    # a damaged entry is ignored and rewritten
    for f in files:
        if f.suffix == ".json":
            f.write_text("{broken")
    assert not make(server, tmp_path).rephrase(zebra, 2).cached
    assert len(server.requests) == 5
    assert make(server, tmp_path).rephrase(zebra, 2).cached


def test_failed_answers_are_not_cached(server, tmp_path, zebra) -> None:
    server.script = [srv.content("nope")] * 3 + [srv.dynamic(good_answer)]
    with pytest.raises(LLMError):
        make(server, tmp_path).rephrase(zebra, 1)
    assert not make(server, tmp_path).rephrase(zebra, 1).cached
    assert len(server.requests) == 4


def test_batch_never_raises(server, tmp_path) -> None:
    prompts = [compose("man in blue", "remove"), compose("cup on the right", "attribute", "red", seed=3),
               compose("dog", "add", "cat")]

    def per_prompt(req: dict, user: dict) -> dict:
        return {"rephrasings": [f"please {user['instruction']}"]}

    server.script = [srv.dynamic(per_prompt), srv.status(401), srv.dynamic(per_prompt)]
    out = enrich_batch(prompts, 1, make(server, tmp_path))
    assert [e.error is None for e in out] == [True, False, True]
    assert "HTTP 401" in out[1].error and out[1].prompts == [prompts[1]]
    assert out[0].rephrasings[0].prompt == f"please {prompts[0].prompt}"
    assert out[2].rephrasings[0].prompt == f"please {prompts[2].prompt}"


def test_settings_and_environment(monkeypatch, tmp_path) -> None:
    with pytest.raises(LLMError, match="OPENAI_API_KEY"):
        LLMSettings().resolved_api_key()
    assert LLMSettings(base_url="http://127.0.0.1:1/v1").resolved_api_key()  # local servers need no key
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://example.invalid/v1")
    assert LLMSettings().resolved_api_key() == "sk-test"
    assert LLMSettings().resolved_base_url() == "http://example.invalid/v1"
    monkeypatch.setenv("REFCOCO_EDIT_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "llm"
    assert LLMSettings().cache_folder() == tmp_path / "c" / "llm"


def test_retry_after_parsing() -> None:
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    date = formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after_seconds({"retry-after": date}) <= 31
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None


def test_parse_and_locate(zebra) -> None:
    assert parse_json_answer(' {"a": 1} ') == {"a": 1}
    with pytest.raises(ValueError):
        parse_json_answer("[1, 2")
    # case-insensitive location keeps the rephrasing's own casing in the spans
    p = locate_parts("The Zebra on the left: swap for a giraffe", "the zebra on the left", ["swap for a giraffe"],
                     zebra, "llm")
    assert p.referring_text == "The Zebra on the left" and p.referring_spans == [[0, 21]]
    assert p.edit_text == "swap for a giraffe" and independent_spans_ok(p)
    assert check_rephrasing(p, zebra) is None
    with pytest.raises(ValueError, match="outside the referring part"):
        locate_parts("replace the zebra on the left", "the zebra on the left", ["zebra"], zebra, "llm")
    remove = compose("man in blue", "remove")
    kept = locate_parts("please delete the man in blue", None, None, remove, "llm")
    assert check_rephrasing(kept, remove) is None
    lost = locate_parts("the man in blue should stay", None, None, remove, "llm")
    assert check_rephrasing(lost, remove) == "edit part no longer says to remove"


def test_cache_key_is_stable_and_sensitive() -> None:
    a = AnswerCache.key({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0.5})
    b = AnswerCache.key({"temperature": 0.5, "messages": [{"content": "x", "role": "user"}], "model": "m"})
    c = AnswerCache.key({"model": "m2", "messages": [{"role": "user", "content": "x"}], "temperature": 0.5})
    assert a == b != c and len(a) == 64
