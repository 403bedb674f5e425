"""litellm against an unmask server (the "openai/" provider prefix: any OpenAI-compatible endpoint).

    unmask serve --port 8011 &
    UNMASK_URL=http://127.0.0.1:8011 python clients/recipes/litellm_recipe.py
"""
import os
from importlib.metadata import version

import litellm

api_base = os.environ.get("UNMASK_URL", "http://127.0.0.1:8000") + "/v1"
print("litellm", version("litellm"))

r = litellm.completion(model="openai/tiny-llada-instruct", api_base=api_base, api_key="none",
                       messages=[{"role": "user", "content": "What is 74 - 38?"}], max_tokens=32, temperature=0)
print("chat:", repr(r.choices[0].message.content), r.choices[0].finish_reason,
      f"prompt={r.usage.prompt_tokens} completion={r.usage.completion_tokens}")

stream = litellm.completion(model="openai/tiny-llada-instruct", api_base=api_base, api_key="none",
                            messages=[{"role": "user", "content": "Sort ascending: 7 6 8 5 7 6"}], max_tokens=32,
                            stream=True, stream_options={"include_usage": True},
                            extra_body={"steps": 32, "block_length": 8})
pieces = []
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if getattr(chunk, "usage", None):
        print("stream:", pieces, f"completion={chunk.usage.completion_tokens}")
print("stream text:", repr("".join(pieces)))
