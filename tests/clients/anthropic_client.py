"""The official `anthropic` Python client against llmvisor's /v1/messages: a
message, a stream, count_tokens, a system prompt and a multi-turn conversation, a
tool round trip (tool_use, then the tool_result answered in text) plain and
streamed, and an error in Anthropic's shape. Prints "ok" at the end.

    python anthropic_client.py BASE_URL MODEL [--real]

`--real`: the model is the tiny random-weight GGUF on the real llama-server, which
writes gibberish and may stop early: only shapes are checked, token counts only as
bounds (mock: exact, as its --help defines them). That llama-server makes no tool
call for the tiny model even when one is required (no grammar: tried by hand, see
src/bin/llmvisor-mock/tools.rs), so there the tool_use turn is written by hand
and only the tool_result's answer is checked.
"""

import sys

import anthropic

base, model = sys.argv[1], sys.argv[2]
real = "--real" in sys.argv[3:]
client = anthropic.Anthropic(base_url=base, api_key="sk-test-anthropic", max_retries=0)

msg = client.messages.create(
    model=model,
    max_tokens=8,
    system="Be brief.",
    messages=[
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": [{"type": "text", "text": "Tell me more"}]},
    ],
)
assert msg.type == "message" and msg.role == "assistant", msg
assert msg.model == model, msg.model
assert msg.id, msg
assert msg.stop_reason in ("end_turn", "max_tokens"), msg.stop_reason
# The tiny model may end at once (an end-of-text token first): 0 is possible there.
assert msg.usage.input_tokens > 0 and (real or msg.usage.output_tokens > 0), msg.usage
assert msg.usage.output_tokens <= 8, msg.usage
if not real or msg.content:
    assert msg.content and msg.content[0].type == "text" and msg.content[0].text, msg.content
print("message:", msg.content, msg.stop_reason, msg.usage)

text = []
with client.messages.stream(
    model=model, max_tokens=6, messages=[{"role": "user", "content": "Stream please"}]
) as stream:
    for t in stream.text_stream:
        text.append(t)
    final = stream.get_final_message()
if real:
    assert final.stop_reason in ("end_turn", "max_tokens"), final.stop_reason
    assert 0 <= final.usage.output_tokens <= 6, final.usage
    assert "".join(text) == "".join(b.text for b in final.content if b.type == "text")
else:
    assert "".join(text) == final.content[0].text and text, (text, final)
    assert final.usage.output_tokens == 6, final.usage
    assert final.stop_reason == "max_tokens", final.stop_reason
assert final.usage.input_tokens > 0, final.usage
print("stream:", "".join(text), final.usage)

count = client.messages.count_tokens(
    model=model, messages=[{"role": "user", "content": "How many tokens is this?"}]
)
assert count.input_tokens > 0, count
print("count_tokens:", count.input_tokens)

# A tool round trip: the model must call the tool ("any"), gets its result back
# and answers in text.
tools = [
    {
        "name": "get_weather",
        "description": "The weather in a city for the next days.",
        "input_schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Oslo"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
        },
    }
]
ask = {"role": "user", "content": "What is the weather in Paris?"}


def check_call(m):
    assert m.stop_reason == "tool_use", (m.stop_reason, m.content)
    uses = [b for b in m.content if b.type == "tool_use"]
    assert len(uses) == 1, m.content
    use = uses[0]
    assert use.id and use.name == "get_weather", use
    assert isinstance(use.input, dict) and use.input["city"] in ("Paris", "Oslo"), use.input
    assert isinstance(use.input["days"], int), use.input
    assert m.usage.output_tokens > 0, m.usage
    return use


if real:
    print("SKIPPED tool_use on the real llama-server: it makes no tool calls for the tiny model")
    called = anthropic.types.Message(
        id="msg_by_hand",
        type="message",
        role="assistant",
        model=model,
        content=[{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": 2}}],
        stop_reason="tool_use",
        usage={"input_tokens": 1, "output_tokens": 1},
    )
    use = called.content[0]
else:
    called = client.messages.create(
        model=model, max_tokens=64, tools=tools, tool_choice={"type": "any"}, messages=[ask]
    )
    use = check_call(called)
print("tool_use:", use.name, use.input, called.usage)

# The result goes back; the model answers in text (on the tiny model "none", so
# that nothing else is possible).
follow = client.messages.create(
    model=model,
    max_tokens=8,
    tools=tools,
    tool_choice={"type": "none"} if real else {"type": "auto"},
    messages=[
        ask,
        {"role": "assistant", "content": called.content},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "18C and sunny"},
                {"type": "text", "text": "Summarise that."},
            ],
        },
    ],
)
assert follow.stop_reason in ("end_turn", "max_tokens"), follow.stop_reason
assert all(b.type == "text" for b in follow.content), follow.content
if not real:
    assert follow.content and follow.content[0].text, follow.content
print("tool_result answered:", follow.content, follow.stop_reason)

# Streamed: the SDK accumulates the input_json_delta fragments into the input.
if not real:
    kinds = []
    with client.messages.stream(
        model=model,
        max_tokens=64,
        tools=tools,
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[ask],
    ) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                kinds.append(event.delta.type)
        streamed = stream.get_final_message()
    use = check_call(streamed)
    assert "input_json_delta" in kinds, kinds
    print("streamed tool_use:", use.input, kinds.count("input_json_delta"), "fragments")

try:
    client.messages.create(
        model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}]
    )
    raise SystemExit("no error for an unknown model")
except anthropic.NotFoundError as e:
    assert e.status_code == 404
    assert e.body["error"]["type"] == "not_found_error", e.body
print("ok")
