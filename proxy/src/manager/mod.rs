//! `/balancer-manager`: see and steer the live balancer, like Apache's page of that name.
//!
//! - `GET /balancer-manager`: the HTML page (no JavaScript needed; its one script,
//!   `/balancer-manager/refresh.js`, adds an auto-refresh box).
//! - `GET /balancer-manager/api/`: the same as JSON, with the nonce;
//!   `/balancer-manager/api/members.csv`: the members as CSV.
//! - `POST /balancer-manager/api/members/ROUTE` (JSON) or `/balancer-manager/members/ROUTE`
//!   (the page's forms): change status or loadfactor, reset to the map, or clear the
//!   member's error.
//!
//! Changes are overrides on top of the route map: kept across map reloads while the
//! member's key and route are unchanged, removable by "reset". Without a store they live
//! in this process and go with their member; with `--overrides-file` or
//! `--overrides-configmap` every proxy sharing the store applies them, and a change that
//! cannot be stored is refused (see
//! [`crate::overrides`]).
//!
//! Every answer here names its host and cannot be framed; changes take only their own
//! content type (a cross-site form can send neither JSON nor, without the nonce, a change)
//! from the same origin (see [`hosts`] and [`access`]).

pub mod access;
pub mod agents;
pub mod api;
pub mod hosts;
pub mod page;
pub mod rates;

use crate::admin::ProxyAdmin;
use crate::overrides::store::Store;
use access::Denied;
use api::{Change, ManagedMember, View};
use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, LOCATION, ORIGIN, REFERER,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use stickyroute_relay::body::{self, Body};
use stickyroute_relay::serve::ConnInfo;

/// Largest change request accepted.
const MAX_BODY: usize = 16 * 1024;

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    body::json(status, &serde_json::json!({ "error": message.into() }))
}

/// Whether the request's `Content-Type` is `wanted` (parameters such as a charset aside).
fn has_content_type(headers: &http::HeaderMap, wanted: &str) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(wanted))
}

impl ProxyAdmin {
    pub fn view(&self) -> View {
        let table = self.balancer.table();
        let proxy_hash = table.as_ref().map(|t| t.snapshot().hash().to_owned());
        View {
            balancer: self.balancer_info(),
            map: self.live.status(),
            members: table
                .map(|t| {
                    t.members()
                        .iter()
                        .map(|m| ManagedMember::of(m, proxy_hash.as_deref()))
                        .collect()
                })
                .unwrap_or_default(),
            nonce: self.nonce.as_str().to_owned(),
            agents_polled: self.settings.agent_admin_port.is_some(),
            overrides: api::OverridesInfo {
                store: self.overrides_store.as_ref().map_or("process", Store::kind),
                version: self.balancer.overrides().version,
                status: self.overrides_store.as_ref().map(Store::status),
            },
            replicas: self.replicas.view(),
        }
    }

    /// Serves every `/balancer-manager` path.
    pub async fn manager(&self, request: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let mut response = self.manage(request, conn).await;
        let headers = response.headers_mut();
        headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ),
        );
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        // The page carries the nonce: never kept by a cache.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    async fn manage(&self, request: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        // The rules as they are now (a reload may replace them between two requests), held
        // as an `Arc` rather than a guard since the request goes on to await its body.
        let current = self.settings.access.load_full();
        if !current
            .hosts
            .allows(request.headers().get(HOST), conn.local.ip())
        {
            tracing::warn!(client = %conn.remote.ip(), host = ?request.headers().get(HOST), "balancer-manager refused: the Host is not one of its names (add it with --admin-host)");
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                "this Host is not a name of the balancer-manager; add it with --admin-host",
            );
        }
        let who = match current.access.check(conn.remote.ip(), request.headers()) {
            Ok(who) => who,
            Err(Denied::Address) => {
                tracing::warn!(client = %conn.remote.ip(), path = request.uri().path(), "balancer-manager refused: address not in --admin-allow");
                return error(
                    StatusCode::FORBIDDEN,
                    "your address is not allowed to use the balancer-manager",
                );
            }
            Err(Denied::Token) => {
                tracing::warn!(client = %conn.remote.ip(), path = request.uri().path(), "balancer-manager refused: no valid token");
                let mut response = error(
                    StatusCode::UNAUTHORIZED,
                    "a valid token is required (Authorization: Bearer TOKEN)",
                );
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"stickyroute balancer-manager\""),
                );
                return response;
            }
        };
        let path = request.uri().path().trim_end_matches('/').to_owned();
        let method = request.method().clone();
        match (method, path.as_str()) {
            (Method::GET | Method::HEAD, "/balancer-manager") => {
                let flash = request
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("done="))
                    .map(|r| format!("Changed {r}."));
                body::with_type(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    Bytes::from(page::render(&self.view(), flash.as_deref())),
                )
            }
            (Method::GET | Method::HEAD, "/balancer-manager/api") => {
                body::json(StatusCode::OK, &self.view())
            }
            (Method::GET | Method::HEAD, "/balancer-manager/api/members.csv") => body::with_type(
                StatusCode::OK,
                "text/csv; charset=utf-8",
                Bytes::from(page::csv(&self.view())),
            ),
            (Method::GET | Method::HEAD, "/balancer-manager/refresh.js") => body::with_type(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                Bytes::from_static(page::REFRESH_JS.as_bytes()),
            ),
            (Method::POST, p) => {
                let (route, form) =
                    if let Some(route) = p.strip_prefix("/balancer-manager/api/members/") {
                        (route.to_owned(), false)
                    } else if let Some(route) = p.strip_prefix("/balancer-manager/members/") {
                        (route.to_owned(), true)
                    } else {
                        return error(StatusCode::NOT_FOUND, "no such balancer-manager path");
                    };
                let headers = request.headers();
                if !hosts::same_origin(headers.get(HOST), headers.get(ORIGIN), headers.get(REFERER))
                {
                    tracing::warn!(%who, member = route, origin = ?headers.get(ORIGIN), referer = ?headers.get(REFERER), "balancer-manager change refused: sent from another site");
                    return error(
                        StatusCode::FORBIDDEN,
                        "changes are accepted only from the balancer-manager's own pages",
                    );
                }
                let wanted = if form {
                    "application/x-www-form-urlencoded"
                } else {
                    "application/json"
                };
                if !has_content_type(headers, wanted) {
                    return error(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        format!("send the change as {wanted}"),
                    );
                }
                self.change(request, &route, form, &who).await
            }
            (_, "/balancer-manager" | "/balancer-manager/api") => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET here; changes are POSTed to a member",
            ),
            _ => error(StatusCode::NOT_FOUND, "no such balancer-manager path"),
        }
    }

    async fn change(
        &self,
        request: Request<Incoming>,
        route: &str,
        form: bool,
        who: &access::Who,
    ) -> Response<Body> {
        // A small body, due as promptly as a request head.
        let reading = Limited::new(request.into_body(), MAX_BODY).collect();
        let body =
            match tokio::time::timeout(self.settings.limits.header_read_timeout, reading).await {
                Ok(Ok(body)) => body.to_bytes(),
                Ok(Err(e)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the request body: {e}"),
                    );
                }
                Err(_) => {
                    return error(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body did not arrive",
                    );
                }
            };
        let parsed = if form {
            Change::from_form(&body)
        } else {
            Change::from_json(&body)
        };
        let change = match parsed {
            Ok(change) => change,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        };
        if !self.nonce.matches(change.nonce.as_deref()) {
            tracing::warn!(%who, member = route, "balancer-manager change refused: missing or wrong nonce");
            return error(
                StatusCode::FORBIDDEN,
                "missing or wrong nonce: load the page or GET /balancer-manager/api/ and send its nonce",
            );
        }
        let Some(table) = self.balancer.table() else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "no route map loaded yet");
        };
        let edit = match api::plan(&table, route, &change, who) {
            Ok(edit) => edit,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        };
        let Some(member) = table.by_route(route) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("no member has route {route:?}"),
            );
        };
        if change.clear_error {
            api::clear_error(who, member);
        }
        let before = api::Before::of(member);
        match (&edit, &self.overrides_store) {
            (None, _) => {}
            (Some(edit), Some(store)) => {
                if let Err(e) = store.change(edit.clone(), &self.balancer).await {
                    tracing::error!(%who, member = route, "balancer-manager change not made: {e}");
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "the change was not made, as the overrides store cannot take it: {e}"
                        ),
                    );
                }
            }
            (Some(edit), None) => self.balancer.edit_overrides(edit),
        }
        if let Some(edit) = &edit {
            api::audit_edit(who, member, edit, &before);
        }
        if form {
            let mut response = body::text(StatusCode::SEE_OTHER, "changed\n");
            let location = format!("/balancer-manager?done={route}");
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(LOCATION, location);
            }
            return response;
        }
        let proxy_hash = table.snapshot().hash().to_owned();
        match table.by_route(route) {
            Some(member) => body::json(
                StatusCode::OK,
                &ManagedMember::of(member, Some(&proxy_hash)),
            ),
            None => error(
                StatusCode::BAD_REQUEST,
                format!("no member has route {route:?}"),
            ),
        }
    }
}
