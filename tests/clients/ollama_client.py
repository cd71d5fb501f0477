"""The official `ollama` Python client against a running llmvisor's Ollama API.

Usage: ollama_client.py BASE_URL CHAT_MODEL EMBED_MODEL
Exits 0 when every check passes; prints what it checked. Works against the mock
and the real llama-server (whose tiny model writes gibberish: only shapes and
token counts are checked).
"""

import sys

import ollama

base_url, model, embed_model = sys.argv[1], sys.argv[2], sys.argv[3]
client = ollama.Client(host=base_url, timeout=60)

names = [m.model for m in client.list().models]
assert model in names and embed_model in names, names
print("list:", names)

info = client.show(model)
assert "completion" in (info.capabilities or []), info
print("show:", info.capabilities)

chat = client.chat(
    model=model,
    messages=[{"role": "user", "content": "say something"}],
    options={"num_predict": 4, "temperature": 0, "seed": 1},
)
assert chat.done and chat.message.role == "assistant", chat
assert chat.done_reason in ("stop", "length"), chat.done_reason
assert 1 <= chat.eval_count <= 4 and chat.prompt_eval_count > 0, chat
assert chat.total_duration > 0, chat
print("chat:", repr(chat.message.content), chat.prompt_eval_count, "+", chat.eval_count, "tokens")

parts, last = [], None
for part in client.chat(
    model=model,
    messages=[{"role": "user", "content": "stream please"}],
    options={"num_predict": 5, "temperature": 0},
    stream=True,
):
    if part.done:
        last = part
    else:
        parts.append(part.message.content)
assert last is not None and parts, parts
assert 1 <= last.eval_count <= 5 and last.done_reason in ("stop", "length"), last
print("chat stream:", len(parts), "parts,", last.eval_count, "tokens,", last.done_reason)

gen = client.generate(model=model, prompt="why is the sky blue?", options={"num_predict": 3})
assert gen.done and isinstance(gen.response, str) and 1 <= gen.eval_count <= 3, gen
print("generate:", repr(gen.response), gen.eval_count, "tokens")

pieces = [p.response for p in client.generate(model=model, prompt="count", options={"num_predict": 3}, stream=True)]
assert pieces, pieces
print("generate stream:", len(pieces), "parts")

ps = [m.model for m in client.ps().models]
assert model in ps, ps
running = client.ps().models[0]
assert running.expires_at is not None, running
print("ps:", ps, "expires", running.expires_at)

emb = client.embed(model=embed_model, input=["hello world", "bye"])
assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) > 0, emb
print("embed:", len(emb.embeddings), "x", len(emb.embeddings[0]))

try:
    client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("expected ResponseError")
except ollama.ResponseError as e:
    assert e.status_code == 404, e
    print("unknown model:", e.status_code, e.error)

print("ok")
