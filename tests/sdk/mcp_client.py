"""The official MCP Python SDK's client, pointed at an MCP route of the gateway.

Environment: `MCP_URL` (the route), `MCP_TOKEN` (sent as `Authorization: Bearer`, as an
agent's httpx client would), `MCP_MODE` (`auto`, the SDK's default, which speaks the
stateless 2026-07-28 protocol to a server that has it, or `legacy`, the session-based
handshake), `MCP_LOCAL_ADDRESS` (the loopback address to connect from, which stands for the
agent's tailnet node), `MCP_ALLOWED` and `MCP_DENIED` (the tools to call). It lists the tools, calls
the allowed one and the denied one, and prints one JSON report:
`{"tools": [...], "allowed": {"error", "text"}, "denied": {"error", "text"}}`.
"""

import asyncio
import json
import os

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def call(client, name, arguments):
    """A tool call's outcome: the SDK's error (raised, or a result marked isError) or text."""
    try:
        result = await client.call_tool(name, arguments)
    except Exception as e:  # the SDK raises an MCPError for a JSON-RPC error answer
        return {"error": f"{type(e).__name__}: {e}", "text": None}
    text = " ".join(getattr(c, "text", "") for c in result.content)
    return {"error": text if result.is_error else None, "text": text}


async def main():
    url = os.environ["MCP_URL"]
    # No token at all (an empty MCP_TOKEN) is a tailnet caller relying on ambient mode.
    token = os.environ.get("MCP_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx2.AsyncHTTPTransport(local_address=os.environ.get("MCP_LOCAL_ADDRESS"))
    async with httpx2.AsyncClient(headers=headers, timeout=30, transport=transport) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=os.environ.get("MCP_MODE", "auto")) as client:
            listed = await client.list_tools(cache_mode="refresh")
            report = {
                "protocol": getattr(client.session, "protocol_version", None),
                "tools": sorted(t.name for t in listed.tools),
                "allowed": await call(client, os.environ.get("MCP_ALLOWED", "search"), {"query": "tailpass"}),
                "denied": await call(client, os.environ.get("MCP_DENIED", "delete_everything"), {}),
            }
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
