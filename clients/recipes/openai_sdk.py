"""The openai SDK against an unmask server: chat, streaming chat, and the Responses API.

    unmask serve --port 8011 &
    UNMASK_URL=http://127.0.0.1:8011 python clients/recipes/openai_sdk.py
"""
import os

import openai
from openai import OpenAI

client = OpenAI(base_url=os.environ.get("UNMASK_URL", "http://127.0.0.1:8000") + "/v1", api_key="none")
model = "tiny-llada-instruct"
print("openai", openai.__version__)

r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 60 + 78?"}],
                                   max_tokens=32, temperature=0)
print("chat:", repr(r.choices[0].message.content), r.choices[0].finish_reason, r.usage)

stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Reverse: y k o v c e h w"}],
                                        max_tokens=32, stream=True, stream_options={"include_usage": True},
                                        extra_body={"preset": "fast"})
pieces = []
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    elif chunk.usage is not None:
        print("stream:", pieces, chunk.usage)

resp = client.responses.create(model=model, input="Uppercase: v c h o r", max_output_tokens=32)
print("responses:", repr(resp.output_text), resp.status, resp.usage)
