// The admin UI in a real browser (headless Chromium from Debian's package, driven by
// playwright-core), against `tailpass serve --dev` at ISSUER:
// log in (the tailnet identity is the connection: nothing to type), create a client and see
// its secret once and not again, rotate a key, revoke a run from the runs page and find the
// revocation in the audit view. Exits non-zero with a message on the first failed check.
//
//   node tests/browser/admin.mjs http://127.0.0.1:PORT
import { chromium } from "playwright-core";

const issuer = process.argv[2];
const fail = (message) => {
  console.error(`FAILED: ${message}`);
  process.exit(1);
};
const check = (condition, message) => condition || fail(message);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage();

  await page.goto(`${issuer}/admin`);
  check((await page.textContent("h1")) === "Endpoints", "the overview shows the endpoints");
  check((await page.content()).includes(`${issuer}/token`), "the token endpoint is listed");

  // A client, and its secret exactly once.
  await page.click("text=Clients");
  await page.fill("input[name=name]", "Browser App");
  await page.fill("input[name=redirect_uris]", "https://app.example/callback");
  await page.click("button:has-text('Register')");
  const secret = (await page.textContent("#client-secret")) || "";
  const clientId = (await page.textContent("#client-id")) || "";
  check(secret.length >= 32, `a secret is shown (${secret})`);
  await page.goto(`${issuer}/admin/clients`);
  check((await page.content()).includes("Browser App"), "the client is listed");
  check(!(await page.content()).includes(secret), "the secret is not shown again (list)");
  await page.goto(`${issuer}/admin/clients/${clientId}`);
  check(!(await page.content()).includes(secret), "the secret is not shown again (client)");

  // A key rotation: the next key becomes active.
  await page.goto(`${issuer}/admin/keys`);
  const activeBefore = await page.$$eval("tr", (rows) =>
    rows.filter((r) => r.textContent.includes("active")).map((r) => r.textContent));
  await page.click("button:has-text('Rotate now')");
  await page.waitForURL(`${issuer}/admin/keys`);
  const activeAfter = await page.$$eval("tr", (rows) =>
    rows.filter((r) => r.textContent.includes("active")).map((r) => r.textContent));
  check(activeBefore.length > 0 && activeAfter.length === activeBefore.length, "active keys listed");
  check(activeAfter.every((row) => !activeBefore.includes(row)), "rotation changed the active keys");

  // A run: an agent token (this machine is the dev identity), revoked from the runs page.
  const minted = await fetch(`${issuer}/token`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: "grant_type=client_credentials&audience=https://api.example&run_label=browser",
  }).then((r) => r.json());
  check(minted.access_token, `an agent token: ${JSON.stringify(minted)}`);
  const claims = JSON.parse(Buffer.from(minted.access_token.split(".")[1], "base64url"));
  await page.goto(`${issuer}/admin/runs`);
  const row = page.locator("tr", { hasText: claims.run_id });
  await row.locator("button:has-text('Revoke run')").click();
  await page.waitForURL(/\/admin\/audit\?run=/);
  const events = await page.$$eval("tr.audit-event", (rows) => rows.map((r) => r.textContent));
  check(events.some((e) => e.includes("revocation") && e.includes(claims.run_id)),
    `the revocation is in the audit view: ${events.join(" | ")}`);
  check(events.some((e) => e.includes("agent_token")), "so is the token it revoked");

  console.log("admin UI: all checks passed");
} finally {
  await browser.close();
}
