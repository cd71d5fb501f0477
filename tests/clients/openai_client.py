"""The official `openai` Python client against a running llmvisor.

Usage: openai_client.py BASE_URL MODEL
Exits 0 when every check passes; prints what it checked.
"""

import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=30)

ids = [m.id for m in client.models.list().data]
assert model in ids, ids
print("models:", ids)

chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "say something"}],
    max_tokens=5,
    # vLLM's extra sampling parameters pass through untouched.
    extra_body={"top_k": 5, "repetition_penalty": 1.05},
)
assert chat.choices[0].message.content, chat
assert chat.usage.completion_tokens == 5, chat.usage
print("chat:", repr(chat.choices[0].message.content), chat.usage.total_tokens, "tokens")

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "stream please"}],
    max_tokens=6,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
assert len(pieces) == 6, pieces
assert usage is not None and usage.completion_tokens == 6, usage
print("stream:", repr("".join(pieces)), usage.total_tokens, "tokens")

comp = client.completions.create(model=model, prompt="one two three", max_tokens=3)
assert comp.usage.prompt_tokens == 3 and comp.choices[0].text, comp
print("completion:", repr(comp.choices[0].text))

emb = client.embeddings.create(model=model, input=["hello world", "bye"])
assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0, emb
print("embeddings:", len(emb.data), "x", len(emb.data[0].embedding))

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e.body
    print("unknown model:", e.status_code, e.code)

try:
    client.chat.completions.create(model=model, messages=[], extra_body={"stream": "yes"})
    raise AssertionError("expected BadRequestError")
except openai.BadRequestError as e:
    assert e.status_code == 400, e
    print("bad request:", e.status_code, e.code)

print("ok")
