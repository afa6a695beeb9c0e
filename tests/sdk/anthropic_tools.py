"""Tool use through the gateway with Anthropic's Python SDK, as an agent does it.

Env: GATEWAY_URL (the gateway's base URL), TOKEN (a tailpass token, sent as a bearer token),
LOCAL_ADDRESS (the tailnet address to call from, which the token is bound to). Prints one
JSON report: the tools the model used, unstreamed and streamed, and how a request offering a
tool outside the token's `tools` claim was refused.
"""
import json
import os

import anthropic
import httpx2


def tool(name):
    return {"name": name, "description": name, "input_schema": {"type": "object"}}


client = anthropic.Anthropic(
    base_url=os.environ["GATEWAY_URL"],
    auth_token=os.environ["TOKEN"],
    max_retries=0,
    http_client=httpx2.Client(
        transport=httpx2.HTTPTransport(local_address=os.environ["LOCAL_ADDRESS"])
    ),
)
messages = [{"role": "user", "content": "What is the weather in Paris?"}]
report = {}

message = client.messages.create(
    model="claude-sonnet", max_tokens=256, messages=messages,
    tools=[tool("get_weather"), tool("read_file")],
)
report["called"] = [b.name for b in message.content if b.type == "tool_use"]

streamed = []
with client.messages.stream(
    model="claude-sonnet", max_tokens=256, messages=messages, tools=[tool("read_file")]
) as stream:
    for event in stream:
        if event.type == "content_block_start" and event.content_block.type == "tool_use":
            streamed.append(event.content_block.name)
    final = stream.get_final_message()
report["streamed"] = streamed
report["final"] = [b.name for b in final.content if b.type == "tool_use"]

try:
    client.messages.create(
        model="claude-sonnet", max_tokens=256, messages=messages,
        tools=[tool("get_weather"), tool("delete_repo")],
    )
    report["refused"] = None
except anthropic.PermissionDeniedError as e:
    report["refused"] = {"status": e.status_code, "body": e.response.json()}

print(json.dumps(report))
