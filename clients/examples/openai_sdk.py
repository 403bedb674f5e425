"""Use an unmask server with the official openai SDK (``pip install openai``).

    unmask serve &        # the embedded tiny model on 127.0.0.1:8000
    python clients/examples/openai_sdk.py

Diffusion settings are not OpenAI parameters: pass them through ``extra_body``; the SDK merges them
into the top level of the JSON body, where the server reads them.
"""
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("UNMASK_URL", "http://127.0.0.1:8000") + "/v1",
                api_key=os.environ.get("UNMASK_API_KEY", "none"))
model = client.models.list().data[0].id

# Non-streaming chat, the reference (exact) algorithm: 64 tokens in blocks of 32, one token per step.
answer = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "What is 12 + 30?"}], max_tokens=64, temperature=0,
    extra_body={"steps": 64, "block_length": 32})
print(answer.choices[0].message.content, answer.usage)

# Streaming with the fast preset (prefix cache + confidence threshold): text arrives block by block.
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Reverse: abc"}], max_tokens=64, stream=True,
    stream_options={"include_usage": True}, extra_body={"preset": "fast"})
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    elif chunk.usage is not None:
        print(f"\n[{chunk.usage.completion_tokens} tokens]")

# Raw completions with token ids and n > 1.
completion = client.completions.create(model=model, prompt=[[1, 2, 3]], max_tokens=16, n=2,
                                       extra_body={"block_length": 16})
print([c.text for c in completion.choices])
