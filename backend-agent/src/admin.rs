//! The agent's admin endpoints: `/healthz`, `/readyz`, `/metrics`, `/status`.

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
            draining: self.lifecycle.is_draining(),
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
                if self.lifecycle.is_draining() {
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
                    .render(&self.agent.live.status(), self.lifecycle.is_draining());
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
}

impl Handler for AgentAdmin {
    async fn handle(&self, request: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        self.route(&request)
    }
}
