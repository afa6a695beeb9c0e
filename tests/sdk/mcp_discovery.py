"""The official MCP Python SDK's OAuth discovery helpers, run against an MCP route of the
gateway with no token: the 401's `resource_metadata`, the RFC 9728 document it names, the
authorization server that document names, and that server's RFC 8414 metadata, each found
and parsed the way the SDK's OAuth client does before it asks for a token.

Environment: `MCP_URL` (the route), `MCP_LOCAL_ADDRESS` (the loopback address to connect
from). Prints one JSON report.
"""

import asyncio
import json
import os

import httpx2
from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    build_protected_resource_metadata_discovery_urls,
    extract_resource_metadata_from_www_auth,
    handle_auth_metadata_response,
    handle_protected_resource_response,
    validate_metadata_issuer,
)
from mcp.shared.auth_utils import check_resource_allowed, resource_url_from_server_url


async def main():
    url = os.environ["MCP_URL"]
    transport = httpx2.AsyncHTTPTransport(local_address=os.environ.get("MCP_LOCAL_ADDRESS"))
    async with httpx2.AsyncClient(timeout=30, transport=transport) as http:
        refused = await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={"Accept": "application/json, text/event-stream"},
        )
        metadata_url = extract_resource_metadata_from_www_auth(refused)
        prm = None
        for candidate in build_protected_resource_metadata_discovery_urls(metadata_url, url):
            prm = await handle_protected_resource_response(await http.get(candidate))
            if prm is not None:
                break
        issuer = str(prm.authorization_servers[0]).rstrip("/") if prm else None
        asm = None
        for candidate in build_oauth_authorization_server_metadata_discovery_urls(issuer, url):
            ok, asm = await handle_auth_metadata_response(await http.get(candidate))
            if asm is not None or not ok:
                break
        issuer_matches = False
        if asm is not None:
            try:
                validate_metadata_issuer(asm, issuer)
                issuer_matches = True
            except Exception:
                issuer_matches = False
        report = {
            "status": refused.status_code,
            "resource_metadata": metadata_url,
            "resource": str(prm.resource) if prm else None,
            "resource_allowed": bool(prm)
            and check_resource_allowed(
                requested_resource=resource_url_from_server_url(url), configured_resource=str(prm.resource)
            ),
            "authorization_server": issuer,
            "issuer": str(asm.issuer).rstrip("/") if asm else None,
            "issuer_matches": issuer_matches,
            "token_endpoint": str(asm.token_endpoint) if asm else None,
        }
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
