"""Tool calls through the official `openai` client on /v1/chat/completions: a
required call, a named one streamed (the deltas put together as the OpenAI docs
show), and the tool's result sent back. Prints "ok" at the end.

    python openai_tools.py BASE_URL MODEL [--real]

Works against the mock and the real llama-server (`--real`: that llama-server
makes no tool call for the tiny model even when one is required — no grammar,
tried by hand, see src/bin/llmvisor-mock/tools.rs — so there the call is written
by hand and only the answer to its result is checked, with tools forbidden).
"""

import json
import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
real = "--real" in sys.argv[3:]
client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)

tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city for the next days.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "enum": ["Paris", "Oslo"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                },
                "required": ["city", "days"],
            },
        },
    }
]
ask = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_args(arguments):
    args = json.loads(arguments)
    assert isinstance(args, dict) and args["city"] in ("Paris", "Oslo"), args
    assert isinstance(args["days"], int), args
    return args


if real:
    print("SKIPPED tool calls on the real llama-server: it makes no tool calls for the tiny model")
    call = {
        "id": "call_by_hand",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
    }
else:
    chat = client.chat.completions.create(
        model=model, messages=ask, tools=tools, tool_choice="required", max_tokens=64
    )
    choice = chat.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1, choice.message
    call = calls[0]
    assert call.type == "function" and call.id and call.function.name == "get_weather", call
    args = check_args(call.function.arguments)
    assert chat.usage.completion_tokens > 0, chat.usage
    print("tool call:", call.id, call.function.name, args, chat.usage.completion_tokens, "tokens")

    stream = client.chat.completions.create(
        model=model,
        messages=ask,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    acc, finish, usage, fragments = {}, None, None, 0
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if not chunk.choices:
            continue
        c = chunk.choices[0]
        for d in c.delta.tool_calls or []:
            entry = acc.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            if d.id:
                entry["id"] = d.id
            if d.function and d.function.name:
                entry["name"] += d.function.name
            if d.function and d.function.arguments:
                entry["arguments"] += d.function.arguments
                fragments += 1
        if c.finish_reason:
            finish = c.finish_reason
    assert finish == "tool_calls", finish
    assert list(acc) == [0] and acc[0]["id"] and acc[0]["name"] == "get_weather", acc
    check_args(acc[0]["arguments"])
    assert fragments >= 1 and usage is not None and usage.completion_tokens > 0, (fragments, usage)
    print("streamed tool call:", acc[0], fragments, "fragments")
    call = call.model_dump()

follow = client.chat.completions.create(
    model=model,
    messages=ask
    + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"},
    ],
    tools=tools,
    tool_choice="none" if real else "auto",
    max_tokens=8,
)
f = follow.choices[0]
assert f.finish_reason in ("stop", "length") and not f.message.tool_calls, f
if not real:
    assert f.message.content, f
print("tool result answered:", repr(f.message.content), f.finish_reason)
print("ok")
