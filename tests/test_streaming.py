"""Streaming guards: commit the reported usage at the end, what was consumed on an early stop
or an error, nothing when nothing came; sync and async, dict events, SDK objects, SSE bytes."""

from __future__ import annotations

import asyncio
import gc

import pytest

from budgetlimiter import AsyncBudgetLimiter, BudgetExceeded, Subject, Usage, parse_policy
from budgetlimiter.streaming import SSEDecoder, StreamUsage, guarded_astream, guarded_stream

from .payloadlib import as_object, load, sse

POLICY = """
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    teams:
      eng:
        limits:
          - {metric: input_tokens, amount: 100000, period: day}
          - {metric: output_tokens, amount: 100000, period: day}
      tiny:
        limits: [{metric: output_tokens, amount: 10, period: day}]
"""
#: guarded_stream is the sync client's helper; guarded_astream has its own tests below
pytestmark = pytest.mark.sync_only("guarded_stream takes a sync BudgetLimiter")
ALICE = Subject("acme", "gpt", team="eng", user="alice")
EST = Usage(input_tokens=3000, output_tokens=500)
TEAM = "org:acme/team:eng"


def counters(limits) -> dict[str, tuple[int, int]]:
    return {s.metric.value: (s.used, s.reserved) for s in limits}


def used(limiter) -> dict[str, tuple[int, int]]:
    return counters(limiter.scope_status(TEAM))


def failing(chunks, after: int):
    yield from chunks[:after]
    raise ConnectionError("upstream reset")


# (payload, reported input, reported output)
FULL = {
    "openai_chat_stream": (2041, 9),
    "openai_responses_stream": (731, 11),
    "anthropic_stream": (472 + 2048, 12),
}


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_stream_commits_the_reported_usage(make_limiter, name):
    bl = make_limiter(POLICY)
    chunks = load(name)
    committed = []
    with guarded_stream(bl, ALICE, EST, lambda: iter(chunks), on_commit=committed.append) as s:
        assert list(s) == chunks
    inp, out = FULL[name]
    assert used(bl) == {"input_tokens": (inp, 0), "output_tokens": (out, 0)}
    assert s.result.status == "committed" and committed[0].usage.input_tokens == inp


def test_sdk_objects_and_sse_bytes_give_the_same_usage(make_limiter):
    bl = make_limiter(POLICY)
    events = load("anthropic_stream")
    for stream in (as_object(events), sse(events, anthropic=True)):
        with guarded_stream(bl, ALICE, EST, stream) as s:
            for _ in s:
                pass
        assert (s.usage.input_tokens, s.usage.output_tokens) == (2520, 12)
        assert s.usage.cached_input_tokens == 2048
    # bytes split at arbitrary places, CRLF line ends
    body = b"".join(sse(load("openai_chat_stream"))).replace(b"\n", b"\r\n")
    tracker = StreamUsage(EST)
    for i in range(0, len(body), 37):
        tracker.feed(body[i:i + 37])
    assert tracker.usage(completed=True) == s.usage.__class__(2041, 9, cached_input_tokens=1920)
    assert SSEDecoder().feed("data: [DONE]\n\ndata: {\"a\": 1}\n\n") == [{"a": 1}]


def test_stream_without_usage_counts_output_text(make_limiter):
    bl = make_limiter(POLICY)
    chunks = [c for c in load("openai_chat_stream") if c["choices"]]  # no include_usage
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    with guarded_stream(bl, ALICE, EST, chunks, tokenizer=lambda t: len(t.split())) as s:
        list(s)
    assert used(bl) == {"input_tokens": (3000, 0), "output_tokens": (len(text.split()), 0)}
    default = StreamUsage(EST)
    for c in chunks:
        default.feed(c)
    assert default.usage(completed=True).output_tokens == -(-len(text) // 4)


def test_consumer_breaking_after_two_chunks_commits_what_was_consumed(make_limiter):
    bl = make_limiter(POLICY)
    with guarded_stream(bl, ALICE, EST, lambda: iter(load("openai_chat_stream"))) as s:
        for i, _ in enumerate(s):
            if i == 1:
                break  # got the role chunk and "Budgets " (8 chars = 2 tokens)
    assert used(bl) == {"input_tokens": (3000, 0), "output_tokens": (2, 0)}
    # Anthropic: message_start already reported the input and 2 output tokens
    s = guarded_stream(bl, ALICE, EST, iter(load("anthropic_stream")))
    assert [next(s)["type"], next(s)["type"]] == ["message_start", "content_block_start"]
    s.close()
    assert used(bl) == {"input_tokens": (3000 + 2520, 0), "output_tokens": (2 + 2, 0)}


def test_abandoned_stream_is_committed_when_collected_and_unread_one_released(make_limiter):
    bl = make_limiter(POLICY)
    gen = (c for c in load("openai_responses_stream"))
    for i, _ in enumerate(guarded_stream(bl, ALICE, EST, gen)):
        if i == 5:
            break  # two text deltas seen: "Reserve before, " (16 chars = 4 tokens)
    gc.collect()
    assert gen.gi_frame is None  # the source was closed too
    assert used(bl) == {"input_tokens": (3000, 0), "output_tokens": (4, 0)}
    guarded_stream(bl, ALICE, EST, iter(load("anthropic_stream"))).close()
    assert used(bl) == {"input_tokens": (3000, 0), "output_tokens": (4, 0)}


def test_error_mid_stream_commits_consumed_and_error_before_first_chunk_releases(make_limiter):
    bl = make_limiter(POLICY)
    s = guarded_stream(bl, ALICE, EST, lambda: failing(load("anthropic_stream"), 5))
    got = []
    with pytest.raises(ConnectionError):
        got.extend(s)
    assert len(got) == 5  # message_start, block start, ping, "Spending ", "limits "
    assert used(bl) == {"input_tokens": (2520, 0), "output_tokens": (4, 0)}  # max(2, 16/4)
    with pytest.raises(ConnectionError), guarded_stream(bl, ALICE, EST, failing([], 0)) as s:
        list(s)
    assert s.result.status == "released"

    def refuse():
        raise TimeoutError("connect")

    with pytest.raises(TimeoutError):
        guarded_stream(bl, ALICE, EST, refuse)
    assert used(bl) == {"input_tokens": (2520, 0), "output_tokens": (4, 0)}


def test_denied_stream_is_never_opened(make_limiter):
    bl = make_limiter(POLICY)
    opened = []
    with pytest.raises(BudgetExceeded) as info:
        guarded_stream(bl, Subject("acme", "gpt", team="tiny"), Usage(10, 50),
                       lambda: opened.append(1) or [])
    assert opened == [] and str(info.value.decision.blocked_by.scope) == "org:acme/team:tiny"


# ------------------------------------------------------------------ async


@pytest.fixture
def make_async(backend_url, clock):
    def make() -> AsyncBudgetLimiter:
        return AsyncBudgetLimiter(parse_policy(POLICY), backend_url, clock=clock, timeout=2)

    return make


async def agen(chunks, fail_after: int | None = None):
    for i, chunk in enumerate(chunks):
        if i == fail_after:
            raise ConnectionError("upstream reset")
        await asyncio.sleep(0)
        yield chunk


async def aused(limiter) -> dict[str, tuple[int, int]]:
    return counters(await limiter.scope_status(TEAM))


def test_async_full_early_stop_and_error(make_async):
    async def main() -> None:
        bl = make_async()
        chunks = load("openai_responses_stream")
        billed = []

        async def bill(done) -> None:
            billed.append(done.cost_usd)

        async with guarded_astream(bl, ALICE, EST, lambda: agen(chunks), on_commit=bill) as s:
            assert [c async for c in s] == chunks
        assert await aused(bl) == {"input_tokens": (731, 0), "output_tokens": (11, 0)}
        assert s.usage.cached_input_tokens == 512 and len(billed) == 1

        async def opener():  # like `await client.chat.completions.create(stream=True)`
            return agen(load("openai_chat_stream"))

        async with guarded_astream(bl, ALICE, EST, opener) as s:
            async for i, _ in aenumerate(s):
                if i == 1:
                    break
        assert await aused(bl) == {"input_tokens": (3731, 0), "output_tokens": (13, 0)}

        s = await guarded_astream(bl, ALICE, EST, agen(load("anthropic_stream"), fail_after=4))
        with pytest.raises(ConnectionError):
            async for _ in s:
                pass
        # message_start (2 reported), block start, ping, "Spending " (9 chars: 3 tokens)
        assert await aused(bl) == {"input_tokens": (3731 + 2520, 0), "output_tokens": (16, 0)}

        s = await guarded_astream(bl, ALICE, EST, agen(["never"], fail_after=0))
        with pytest.raises(ConnectionError):
            await s.__anext__()
        assert s.result.status == "released"
        with pytest.raises(BudgetExceeded):
            await guarded_astream(bl, Subject("acme", "gpt", team="tiny"), Usage(1, 11), [])
        assert (await aused(bl))["output_tokens"] == (16, 0)
        await bl.aclose()

    asyncio.run(main())


def test_async_abandoned_stream_is_committed_by_the_event_loop(make_async):
    async def main() -> None:
        bl = make_async()
        s = await guarded_astream(bl, ALICE, EST, agen(load("anthropic_stream")))
        async for i, _ in aenumerate(s):
            if i == 3:
                break
        del s
        gc.collect()
        for _ in range(50):  # the loop's async-generator finalizer runs aclose()
            gc.collect()
            await asyncio.sleep(0.01)
            if (await aused(bl))["input_tokens"] != (0, 3000):
                break
        # 4 chunks: message_start, block start, ping, "Spending " (3 tokens > 2 reported)
        assert await aused(bl) == {"input_tokens": (2520, 0), "output_tokens": (3, 0)}
        await bl.aclose()

    asyncio.run(main())


async def aenumerate(iterable):
    i = 0
    async for item in iterable:
        yield i, item
        i += 1
