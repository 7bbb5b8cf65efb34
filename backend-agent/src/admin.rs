//! The agent's admin endpoints: `/healthz`, `/readyz`, `/metrics`, `/status`, and the
//! drain: `GET /drain` (its state), `POST /drain` (begin; with `?wait`, answer once done),
//! `DELETE /drain` (take it back), and `GET /prestop`, which begins a drain and answers once
//! it is done, for Kubernetes' `preStop` hook (which can only send GET).
//!
//! Anyone who can reach the admin listener can drain the member, as with Apache's
//! balancer-manager: keep it on loopback (the default) or let only the proxy and the
//! kubelet reach it.

use crate::handler::Agent;
use crate::identity::MatchedBy;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use stickyroute_relay::admin;
use stickyroute_relay::agent_status::{self, AgentStatus, Keys, MapReport, OwnRoute};
use stickyroute_relay::body::{self, Body};
use stickyroute_relay::process::lifecycle::Lifecycle;
use stickyroute_relay::serve::{ConnInfo, Handler};

pub struct AgentAdmin {
    pub agent: Arc<Agent>,
    pub lifecycle: Arc<Lifecycle>,
    /// The admin listener's connection counters (the traffic listener's are the agent's).
    pub admin_stats: Arc<stickyroute_relay::serve::stats::ServeStats>,
}

impl AgentAdmin {
    /// `/status`: what an operator (or the proxy's balancer-manager) wants to know, in the
    /// shape both binaries share.
    fn status(&self) -> AgentStatus {
        let identity = self.agent.identity();
        let snapshot = self.agent.live.load();
        let addresses = identity.addr_keys().to_vec();
        let routes = addresses
            .iter()
            .map(|address| {
                let found = snapshot.as_ref().and_then(|s| identity.lookup(s, *address));
                OwnRoute {
                    address: *address,
                    route: found.map(|(e, _)| e.route.to_string()),
                    matched_by: found.map(|(_, by)| match by {
                        MatchedBy::Address => agent_status::MatchedBy::Address,
                        MatchedBy::Name => agent_status::MatchedBy::Name,
                    }),
                }
            })
            .collect();
        AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            upstream: self.agent.settings.upstream.to_string(),
            keys: Keys {
                addresses,
                name: identity.name_key().map(ToString::to_string),
            },
            routes,
            default_route: self
                .agent
                .settings
                .policy
                .load()
                .default_route
                .as_ref()
                .map(ToString::to_string),
            map: MapReport::from(&self.agent.live.status()),
            draining: self.agent.drain.is_draining(),
            drain: self.agent.drain.report(),
            app: self.agent.app.report(),
        }
    }

    fn route(&self, request: &Request<Incoming>) -> Response<Body> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return body::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match request.uri().path() {
            "/healthz" => admin::healthz(),
            "/readyz" => {
                let mut problems = Vec::new();
                if !self.agent.live.is_ready() {
                    problems.push("no route map loaded yet");
                }
                // A draining agent stays ready: its sessions still reach it (an EndpointSlice
                // endpoint's `serving` follows readiness). It is unready once it stops.
                if self.lifecycle.is_stopping() {
                    problems.push("shutting down");
                }
                if self.agent.app.check_failing() {
                    problems.push("the app fails its health check");
                }
                admin::readyz(&problems)
            }
            "/metrics" => {
                let mut text = self
                    .agent
                    .metrics
                    .render(&self.agent.live.status(), self.agent.drain.is_draining());
                admin::serve_metrics(&mut text, &self.agent.stats, &self.admin_stats);
                if let Some(log) = &self.agent.access_log {
                    log.render(&mut text);
                }
                admin::metrics(text)
            }
            "/status" => body::json(StatusCode::OK, &self.status()),
            _ => admin::not_found(),
        }
    }

    /// `/drain` and `/prestop`.
    async fn drain(&self, request: &Request<Incoming>) -> Response<Body> {
        let drain = &self.agent.drain;
        let wait = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "wait" || p.starts_with("wait=")));
        let path = request.uri().path();
        match (request.method().clone(), path) {
            (Method::GET | Method::HEAD, "/drain") => {
                return body::json(StatusCode::OK, &drain.report());
            }
            (Method::POST, "/drain") if !wait => {
                drain.start("POST /drain");
                return body::json(StatusCode::ACCEPTED, &drain.report());
            }
            (Method::POST, "/drain") | (Method::GET, "/prestop") => {
                let reason = if path == "/prestop" {
                    "GET /prestop"
                } else {
                    "POST /drain"
                };
                drain.until_done(reason, std::time::Duration::ZERO).await;
            }
            (Method::DELETE, "/drain") => {
                if self.lifecycle.is_draining() {
                    return body::text(
                        StatusCode::CONFLICT,
                        "the agent is shutting down; its drain cannot be taken back\n",
                    );
                }
                drain.cancel();
            }
            _ => {
                return body::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "use GET or POST /drain, DELETE /drain, GET /prestop\n",
                );
            }
        }
        body::json(StatusCode::OK, &drain.report())
    }
}

impl Handler for AgentAdmin {
    async fn handle(&self, request: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        match request.uri().path() {
            "/drain" | "/prestop" => self.drain(&request).await,
            _ => self.route(&request),
        }
    }
}
