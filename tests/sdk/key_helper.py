"""The OpenAI Python SDK with `tailpass token --helper` as its key callable, as the README
shows: the SDK calls the helper before every request, the helper answers its cached token.

Environment: TAILPASS_BIN, ISSUER, AUDIENCE, GATEWAY_URL, LOCAL_ADDRESS (the tailnet peer the
SDK's connections come from). Prints one JSON report: how often the helper ran, the distinct
tokens it printed, and the answers' contents.
"""

import json
import os
import subprocess

import httpx2
from openai import OpenAI

calls = []


def tailpass_token() -> str:
    token = subprocess.run(
        [os.environ["TAILPASS_BIN"], "token", "--helper", "--issuer", os.environ["ISSUER"],
         "--audience", os.environ["AUDIENCE"]],
        check=True, capture_output=True, text=True).stdout.strip()
    calls.append(token)
    return token


http_client = httpx2.Client(
    transport=httpx2.HTTPTransport(local_address=os.environ["LOCAL_ADDRESS"]))
client = OpenAI(base_url=os.environ["GATEWAY_URL"] + "/v1", api_key=tailpass_token,
                http_client=http_client, max_retries=0)
contents = []
for _ in range(2):
    answer = client.chat.completions.create(
        model="gpt-small", messages=[{"role": "user", "content": "hi"}])
    contents.append(answer.choices[0].message.content)

print(json.dumps({"helper_calls": len(calls), "distinct_tokens": len(set(calls)),
                  "contents": contents}))
