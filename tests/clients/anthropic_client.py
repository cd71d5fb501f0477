"""The official `anthropic` Python client against llmvisor's /v1/messages (on the
mock backend): a message, a stream, count_tokens, a system prompt and a multi-turn
conversation, and an error in Anthropic's shape. Prints "ok" at the end.

    python anthropic_client.py BASE_URL MODEL
"""

import sys

import anthropic

base, model = sys.argv[1], sys.argv[2]
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
assert msg.content and msg.content[0].type == "text" and msg.content[0].text, msg.content
assert msg.stop_reason in ("end_turn", "max_tokens"), msg.stop_reason
assert msg.usage.input_tokens > 0 and 0 < msg.usage.output_tokens <= 8, msg.usage
print("message:", msg.content[0].text, msg.stop_reason, msg.usage)

text = []
with client.messages.stream(
    model=model, max_tokens=6, messages=[{"role": "user", "content": "Stream please"}]
) as stream:
    for t in stream.text_stream:
        text.append(t)
    final = stream.get_final_message()
assert "".join(text) == final.content[0].text and text, (text, final)
assert final.usage.output_tokens == 6, final.usage
assert final.stop_reason == "max_tokens", final.stop_reason
print("stream:", "".join(text), final.usage)

count = client.messages.count_tokens(
    model=model, messages=[{"role": "user", "content": "How many tokens is this?"}]
)
assert count.input_tokens > 0, count
print("count_tokens:", count.input_tokens)

try:
    client.messages.create(
        model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "x"}]
    )
    raise SystemExit("no error for an unknown model")
except anthropic.NotFoundError as e:
    assert e.status_code == 404
    assert e.body["error"]["type"] == "not_found_error", e.body
print("ok")
