"""A real MCP server, built with the official MCP Python SDK (`MCPServer`, streamable HTTP),
for the gateway's tests to front.

It listens on 127.0.0.1 on the port in `MCP_PORT` (0, the default, picks a free one) and
prints one JSON line, `{"port": N}`, once it accepts connections. Its tools are `search`
and `delete_everything`. Every HTTP request it receives is appended to the JSONL file
`MCP_RECORD_FILE` as `{"method", "path", "headers"}`, and every tool it runs as
`{"tool": NAME}`, so a test can tell what reached it.
"""

import json
import os
import socket
import sys

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer

RECORD = os.environ.get("MCP_RECORD_FILE")


def record(entry):
    if RECORD:
        with open(RECORD, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


server = MCPServer("docs")


@server.tool()
def search(query: str) -> str:
    """Searches the documents."""
    record({"tool": "search"})
    return f"found: {query}"


@server.tool()
def delete_everything() -> str:
    """Deletes every document."""
    record({"tool": "delete_everything"})
    return "deleted"


class Recorder:
    """ASGI middleware: records each request's method, path and headers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            record(
                {
                    "method": scope["method"],
                    "path": scope["path"],
                    "query": scope.get("query_string", b"").decode("latin-1"),
                    "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
                }
            )
        await self.app(scope, receive, send)


async def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(os.environ.get("MCP_PORT", "0"))))
    sock.listen(64)
    app = Recorder(server.streamable_http_app(streamable_http_path="/mcp"))
    config = uvicorn.Config(app, log_level="warning")
    uv = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(uv.serve, [sock])
        while not uv.started:
            await anyio.sleep(0.01)
        print(json.dumps({"port": sock.getsockname()[1]}), flush=True)


if __name__ == "__main__":
    anyio.run(main)
    sys.exit(0)
