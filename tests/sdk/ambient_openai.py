"""Ambient mode through the official OpenAI SDK: a chat completion with no API key at all.

The client sends no `Authorization` (omitted the SDK's own way) and connects from the
tailnet peer's address; the gateway obtains the caller's run token itself. Prints one JSON
report: the answer's text and usage.

Environment: GATEWAY_URL (base URL, ending in /v1), GATEWAY_HOST (the Host the gateway's public
URL names), LOCAL_ADDRESS (the peer's source address).
"""

import json
import os

import openai

try:
    import httpx2 as httpx
except ImportError:  # the module may keep httpx's name
    import httpx


def main() -> None:
    transport = httpx.HTTPTransport(local_address=os.environ["LOCAL_ADDRESS"])
    client = openai.OpenAI(
        base_url=os.environ["GATEWAY_URL"],
        # The SDK insists on a key; omitting the header it would go in sends none.
        api_key="unused",
        default_headers={"Host": os.environ["GATEWAY_HOST"]},
        http_client=httpx.Client(transport=transport),
        max_retries=0,
    )
    answer = client.chat.completions.create(
        model="gpt-small",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"Authorization": openai.Omit()},
    )
    print(
        json.dumps(
            {
                "content": answer.choices[0].message.content,
                "total_tokens": answer.usage.total_tokens,
            }
        )
    )


if __name__ == "__main__":
    main()
