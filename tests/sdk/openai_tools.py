"""Tool calling through the gateway with OpenAI's Python SDK, as an agent does it.

Env: GATEWAY_URL (the gateway's base URL), TOKEN (a tailpass token, passed as the SDK's API
key), LOCAL_ADDRESS (the tailnet address to call from, which the token is bound to). Prints
one JSON report: the functions the model called, unstreamed and streamed, and how a request
offering a tool outside the token's `tools` claim was refused.
"""
import json
import os

import httpx2
import openai

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def function(name):
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


client = openai.OpenAI(
    base_url=os.environ["GATEWAY_URL"] + "/v1",
    api_key=os.environ["TOKEN"],
    max_retries=0,
    http_client=httpx2.Client(
        transport=httpx2.HTTPTransport(local_address=os.environ["LOCAL_ADDRESS"])
    ),
)
messages = [{"role": "user", "content": "What is the weather in Paris?"}]
report = {}

completion = client.chat.completions.create(
    model="gpt-small", messages=messages, tools=[WEATHER, function("read_file")]
)
report["called"] = [c.function.name for c in completion.choices[0].message.tool_calls or []]

streamed = []
for chunk in client.chat.completions.create(
    model="gpt-small", messages=messages, tools=[function("read_file")], stream=True
):
    for choice in chunk.choices:
        for call in choice.delta.tool_calls or []:
            if call.function and call.function.name:
                streamed.append(call.function.name)
report["streamed"] = streamed

try:
    client.chat.completions.create(
        model="gpt-small", messages=messages, tools=[WEATHER, function("delete_repo")]
    )
    report["refused"] = None
except openai.PermissionDeniedError as e:
    report["refused"] = {"status": e.status_code, "body": e.response.json()}

print(json.dumps(report))
