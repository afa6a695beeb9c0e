"""OpenAI's and Anthropic's official Python SDKs, pointed at the tailpass gateway.

Run by tests/it/gateway_providers.rs, which starts tailpass, the gateway and a test double of
each paid API behind it, mints the tokens, and asserts on the report this prints (one JSON
object on stdout) and on what the doubles received. Each step records what the SDK gave back
or the error it raised; nothing here decides whether the gateway behaved.

Environment:
  GATEWAY      the gateway's base URL (http://127.0.0.1:PORT)
  PEER         the local address to call from (the node the tokens are bound to)
  TOKEN        an agent token whose rule allows the test models
  QUOTA_PEER   the local address of the node whose rule allows two requests per run
  QUOTA_TOKEN  a token minted there
"""

import json
import os
import sys

import anthropic
import httpx2
import openai


def client_from(address):
    # The SDKs take an httpx client; binding its source address makes the call come from the
    # node the token is bound to, as an agent on that node would.
    return httpx2.Client(transport=httpx2.HTTPTransport(local_address=address), timeout=30)


def attempt(report, name, step):
    try:
        report[name] = step()
    except (openai.APIStatusError, anthropic.APIStatusError) as e:
        # The raw answer: the SDKs unwrap an `error` member into `e.body` differently.
        try:
            body = e.response.json()
        except ValueError:
            body = {}
        report[name] = {
            "error": type(e).__name__,
            "status": e.status_code,
            "code": body.get("error") if isinstance(body.get("error"), str) else None,
            "description": body.get("error_description"),
        }


def openai_steps(report, gateway, http, token):
    client = openai.OpenAI(
        base_url=f"{gateway}/openai/v1", api_key=token, http_client=http, max_retries=0
    )
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }

    def chat():
        answer = client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "weather in Paris?"}],
            tools=[weather],
        )
        message = answer.choices[0].message
        return {
            "content": message.content,
            "tool_calls": [c.function.name for c in message.tool_calls or []],
            "usage": [answer.usage.prompt_tokens, answer.usage.completion_tokens],
        }

    def chat_stream():
        text, tools, usage = "", [], None
        for chunk in client.chat.completions.create(
            model="gpt-test-mini",
            messages=[{"role": "user", "content": "hi"}],
            tools=[weather],
            stream=True,
        ):
            for choice in chunk.choices:
                text += choice.delta.content or ""
                for call in choice.delta.tool_calls or []:
                    if call.function and call.function.name:
                        tools.append(call.function.name)
            if chunk.usage:
                usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
        return {"content": text, "tool_calls": tools, "usage": usage}

    def responses():
        answer = client.responses.create(model="gpt-test", input="hi")
        return {
            "text": answer.output_text,
            "usage": [answer.usage.input_tokens, answer.usage.output_tokens],
        }

    def responses_stream():
        events, text, usage = [], "", None
        for event in client.responses.create(model="gpt-test", input="hi", stream=True):
            events.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type == "response.completed":
                usage = [event.response.usage.input_tokens, event.response.usage.output_tokens]
        return {"events": events, "text": text, "usage": usage}

    def embeddings():
        answer = client.embeddings.create(model="text-embedding-test", input="hello")
        return {"dimensions": len(answer.data[0].embedding), "first": answer.data[0].embedding[0]}

    attempt(report, "openai_chat", chat)
    attempt(report, "openai_chat_stream", chat_stream)
    attempt(report, "openai_responses", responses)
    attempt(report, "openai_responses_stream", responses_stream)
    attempt(report, "openai_embeddings", embeddings)
    attempt(
        report,
        "openai_forbidden_model",
        lambda: client.chat.completions.create(
            model="gpt-5-expensive", messages=[{"role": "user", "content": "hi"}]
        ).model_dump(),
    )
    attempt(report, "openai_files", lambda: [f.id for f in client.files.list()])


def anthropic_steps(report, gateway, http, token):
    # `api_key` makes this SDK send `Authorization: Bearer`; a tool that sets only the
    # provider's own key header is the second client.
    client = anthropic.Anthropic(
        base_url=f"{gateway}/anthropic", api_key=token, http_client=http, max_retries=0
    )
    by_header = anthropic.Anthropic(
        base_url=f"{gateway}/anthropic",
        default_headers={"x-api-key": token},
        http_client=http,
        max_retries=0,
    )
    search = {"name": "search", "input_schema": {"type": "object"}}

    def messages(c):
        answer = c.messages.create(
            model="claude-test",
            max_tokens=100,
            messages=[{"role": "user", "content": "find it"}],
            tools=[search],
        )
        return {
            "text": "".join(b.text for b in answer.content if b.type == "text"),
            "tool_uses": [b.name for b in answer.content if b.type == "tool_use"],
            "usage": [answer.usage.input_tokens, answer.usage.output_tokens],
        }

    def stream():
        with client.messages.stream(
            model="claude-test",
            max_tokens=100,
            messages=[{"role": "user", "content": "find it"}],
            tools=[search],
        ) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        return {
            "text": text,
            "tool_uses": [b.name for b in final.content if b.type == "tool_use"],
            "usage": [final.usage.input_tokens, final.usage.output_tokens],
        }

    def count_tokens():
        return client.messages.count_tokens(
            model="claude-test", messages=[{"role": "user", "content": "hi"}]
        ).input_tokens

    attempt(report, "anthropic_messages", lambda: messages(client))
    attempt(report, "anthropic_messages_by_key_header", lambda: messages(by_header))
    attempt(report, "anthropic_stream", stream)
    attempt(report, "anthropic_count_tokens", count_tokens)
    attempt(
        report,
        "anthropic_forbidden_model",
        lambda: client.messages.create(
            model="claude-opus-expensive",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
        ).model_dump(),
    )
    attempt(report, "anthropic_batches", lambda: [b.id for b in client.messages.batches.list()])


def quota_steps(report, gateway, http, token):
    # The token's run may make two requests: one to each provider, then both refuse.
    oa = openai.OpenAI(
        base_url=f"{gateway}/openai/v1", api_key=token, http_client=http, max_retries=0
    )
    an = anthropic.Anthropic(
        base_url=f"{gateway}/anthropic", api_key=token, http_client=http, max_retries=0
    )
    chat = lambda: oa.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    ).choices[0].message.content
    message = lambda: an.messages.create(
        model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ).content[0].text
    attempt(report, "quota_openai_1", chat)
    attempt(report, "quota_anthropic_1", message)
    attempt(report, "quota_openai_2", chat)
    attempt(report, "quota_anthropic_2", message)


def main():
    env = os.environ
    report = {}
    with client_from(env["PEER"]) as http:
        openai_steps(report, env["GATEWAY"], http, env["TOKEN"])
        anthropic_steps(report, env["GATEWAY"], http, env["TOKEN"])
    with client_from(env["QUOTA_PEER"]) as http:
        quota_steps(report, env["GATEWAY"], http, env["QUOTA_TOKEN"])
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
