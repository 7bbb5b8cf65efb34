//! The balancer-manager's JSON API as the tests drive it.

use crate::client::{Reply, call, get};
use http::Method;
use serde_json::Value;
use std::net::SocketAddr;

/// The API's root: the whole view, with the nonce.
pub const API: &str = "/balancer-manager/api/";

/// `GET` [`API`], which must answer 200.
pub async fn view(admin: SocketAddr) -> Value {
    let reply = get(admin, API).send().await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

/// The member with `route` in a view.
pub fn member<'a>(view: &'a Value, route: &str) -> &'a Value {
    view["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["route"] == route))
        .unwrap_or_else(|| panic!("no {route} in {view}"))
}

/// POSTs `body` (JSON, the nonce included) as a change to the member with `route`.
pub async fn change(admin: SocketAddr, route: &str, body: Value) -> Reply {
    call(
        admin,
        Method::POST,
        &format!("/balancer-manager/api/members/{route}"),
    )
    .header("content-type", "application/json")
    .body(body.to_string())
    .send()
    .await
}
