//! The admin UI over HTTP: who may see it, and CSRF protection on every state change.

use crate::support::{ALICE, BOB, STRANGER, TestServer};

/// The CSRF token in a page's forms.
fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a token")
        + 19;
    page[at..at + 64].to_owned()
}

async fn get(server: &TestServer, from: u8, path: &str) -> (u16, String) {
    let response = server
        .peer(from)
        .get(server.url(path))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn post(
    server: &TestServer,
    from: u8,
    path: &str,
    fetch_site: &str,
    form: &[(&str, &str)],
) -> (u16, String) {
    let response = server
        .peer(from)
        .post(server.url(path))
        .header("sec-fetch-site", fetch_site)
        .form(form)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn only_administrators_on_the_tailnet_see_the_ui() {
    let server = TestServer::start().await;
    let (status, page) = get(&server, ALICE, "/admin").await;
    assert_eq!(status, 200);
    assert!(page.contains(&server.url("/token")), "endpoints listed");
    let (status, _) = get(&server, BOB, "/admin/clients").await;
    assert_eq!(status, 403, "no allow_admin_ui grant");
    let (status, _) = get(&server, STRANGER, "/admin").await;
    assert_eq!(status, 403, "not on the tailnet");
    let funnel = server
        .peer(ALICE)
        .get(server.url("/admin"))
        .header("tailscale-funnel-request", "?1")
        .send()
        .await
        .unwrap();
    assert_eq!(funnel.status(), 403, "never over funnel");
}

/// The client-registration form.
fn form(csrf: &str) -> [(&str, &str); 3] {
    [
        ("csrf", csrf),
        ("name", "Wiki"),
        ("redirect_uris", "https://wiki.example/cb"),
    ]
}

#[tokio::test]
async fn a_cross_site_post_is_refused_and_a_same_origin_post_with_its_token_accepted() {
    let server = TestServer::start().await;
    let (_, page) = get(&server, ALICE, "/admin/clients").await;
    let token = csrf(&page);

    let (status, _) = post(
        &server,
        ALICE,
        "/admin/clients",
        "cross-site",
        &form(&token),
    )
    .await;
    assert_eq!(status, 403, "cross-site, even with a valid token");
    let (status, _) = post(&server, ALICE, "/admin/clients", "same-origin", &form("")).await;
    assert_eq!(status, 403, "same-origin without the token");
    let wrong = "0".repeat(64);
    let (status, _) = post(
        &server,
        ALICE,
        "/admin/clients",
        "same-origin",
        &form(&wrong),
    )
    .await;
    assert_eq!(status, 403, "same-origin with a made-up token");
    let (_, list) = get(&server, ALICE, "/admin/clients").await;
    assert!(!list.contains("Wiki"), "nothing was created");

    let (status, created) = post(
        &server,
        ALICE,
        "/admin/clients",
        "same-origin",
        &form(&token),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert!(
        created.contains("id=\"client-secret\""),
        "the secret shown once"
    );
    let (_, list) = get(&server, ALICE, "/admin/clients").await;
    assert!(list.contains("Wiki"));
    assert!(!list.contains("client-secret"), "and not again");
}
