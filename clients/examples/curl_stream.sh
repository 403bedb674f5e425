#!/usr/bin/env bash
# Stream a chat answer from an unmask server with curl (SSE: one "data: {json}" line per chunk).
#   unmask serve &   then   bash clients/examples/curl_stream.sh "What is 12 + 30?"
# Diffusion settings are plain top-level fields (steps, block_length, threshold, preset, ...).
# Add  "denoise": true  to stream_options to also receive "event: denoise" canvas events.
set -euo pipefail
URL="${UNMASK_URL:-http://127.0.0.1:8000}"
PROMPT="${1:-What is 12 + 30?}"
AUTH=()
if [[ -n "${UNMASK_API_KEY:-}" ]]; then AUTH=(-H "Authorization: Bearer ${UNMASK_API_KEY}"); fi
BODY=$(python3 -c 'import json,sys; print(json.dumps({
  "messages": [{"role": "user", "content": sys.argv[1]}],
  "max_tokens": 64, "stream": True, "stream_options": {"include_usage": True},
  "preset": "fast"}))' "$PROMPT")
curl -sN "${AUTH[@]}" "$URL/v1/chat/completions" -H "Content-Type: application/json" -d "$BODY"
