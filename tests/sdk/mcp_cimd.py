"""The official MCP Python SDK's OAuth client, registering by Client ID Metadata Document.

Pointed at an MCP route of the gateway with no token, the SDK's `OAuthClientProvider` follows
the 401 to the RFC 9728 metadata, then to tailpass's authorization server metadata; seeing
`client_id_metadata_document_supported`, it uses `MCP_CLIENT_ID` (the document's https URL)
as its client id instead of registering. The person's browser is played by this script: the
authorization URL is opened from `MCP_LOCAL_ADDRESS` (the address stands for the person's
tailnet node), the consent page's form is posted back as a browser would (same origin), and
the redirect's code and state are handed to the SDK, which redeems them with PKCE and calls
the `search` tool.

Environment: `MCP_URL` (the route), `MCP_CLIENT_ID`, `MCP_REDIRECT_URI` (the document's),
`MCP_LOCAL_ADDRESS`. Prints one JSON report.
"""

import asyncio
import html
import json
import os
import re
from urllib.parse import parse_qs, urlencode, urlparse

import httpx2
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken


class Memory:
    """Token storage in memory: this run only."""

    def __init__(self):
        self.tokens = None
        self.client_info = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def hidden_fields(page: str) -> list[tuple[str, str]]:
    fields = []
    for tag in re.findall(r'<input type="hidden" [^>]*>', page):
        name = re.search(r'name="([^"]*)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name and value:
            fields.append((html.unescape(name.group(1)), html.unescape(value.group(1))))
    return fields


async def main():
    url = os.environ["MCP_URL"]
    local = os.environ["MCP_LOCAL_ADDRESS"]
    report = {"consent_page": None, "authorize_query": None}
    redirected: dict = {}

    async def browser(authorization_url: str) -> None:
        """The person: opens the authorization URL, approves on the consent page."""
        report["authorize_query"] = parse_qs(urlparse(authorization_url).query)
        origin = "{0.scheme}://{0.netloc}".format(urlparse(authorization_url))
        transport = httpx2.AsyncHTTPTransport(local_address=local)
        async with httpx2.AsyncClient(timeout=30, transport=transport, follow_redirects=False) as web:
            page = await web.get(authorization_url, headers={"Accept": "text/html"})
            report["consent_page"] = {"status": page.status_code, "text": page.text}
            fields = hidden_fields(page.text) + [("decision", "approve")]
            approved = await web.post(
                f"{origin}/authorize/consent",
                content=urlencode(fields).encode(),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Origin": origin,
                    "Sec-Fetch-Site": "same-origin",
                    "Accept": "text/html",
                },
            )
            location = approved.headers.get("location", "")
            redirected.update({k: v[0] for k, v in parse_qs(urlparse(location).query).items()})
            report["consent_status"] = approved.status_code

    async def callback() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(
            code=redirected["code"], state=redirected.get("state"), iss=redirected.get("iss")
        )

    storage = Memory()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="SDK CIMD client",
            redirect_uris=[os.environ["MCP_REDIRECT_URI"]],
            grant_types=["authorization_code"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=browser,
        callback_handler=callback,
        client_metadata_url=os.environ["MCP_CLIENT_ID"],
    )
    transport = httpx2.AsyncHTTPTransport(local_address=local)
    async with httpx2.AsyncClient(auth=provider, timeout=30, transport=transport) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            listed = await client.list_tools(cache_mode="refresh")
            result = await client.call_tool("search", {"query": "tailpass"})
            report["tools"] = sorted(t.name for t in listed.tools)
            report["search"] = " ".join(getattr(c, "text", "") for c in result.content)
            report["search_error"] = bool(result.is_error)
    report["client_id"] = storage.client_info.client_id if storage.client_info else None
    report["access_token"] = storage.tokens.access_token if storage.tokens else None
    if report["consent_page"]:
        report["consent_page"]["text"] = report["consent_page"]["text"][:4000]
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
