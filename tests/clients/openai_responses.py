"""The official `openai` Python client's Responses API (`client.responses.create`,
plain and streamed) against a running llmvisor.

Usage: openai_responses.py BASE_URL MODEL
Exits 0 when every check passes; prints what it checked. Works against the mock
and the real llama-server (whose tiny model writes gibberish: only shapes and
token counts are checked).
"""

import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)

resp = client.responses.create(
    model=model,
    instructions="Answer briefly.",
    input="say something",
    max_output_tokens=4,
    temperature=0,
)
assert resp.object == "response" and resp.status == "completed", resp
assert resp.output and resp.output[0].type == "message", resp.output
assert isinstance(resp.output_text, str), resp
assert resp.usage.input_tokens > 0 and 1 <= resp.usage.output_tokens <= 4, resp.usage
print("responses:", repr(resp.output_text), resp.usage.input_tokens, "+", resp.usage.output_tokens, "tokens")

stream = client.responses.create(
    model=model,
    input=[{"role": "user", "content": [{"type": "input_text", "text": "stream please"}]}],
    max_output_tokens=5,
    temperature=0,
    stream=True,
)
kinds, deltas, completed = [], [], None
for event in stream:
    kinds.append(event.type)
    if event.type == "response.output_text.delta":
        deltas.append(event.delta)
    if event.type == "response.completed":
        completed = event.response
assert kinds[0] == "response.created", kinds
assert completed is not None, kinds
assert deltas, kinds
assert 1 <= completed.usage.output_tokens <= 5, completed.usage
print("responses stream:", len(kinds), "events,", len(deltas), "deltas,",
      completed.usage.input_tokens, "+", completed.usage.output_tokens, "tokens")

try:
    client.responses.create(model="no-such-model", input="x")
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e.body
    print("unknown model:", e.status_code, e.code)

print("ok")
