//! The request path: forward to the app, and set the sticky cookie when the exchange
//! belongs to a session and the client does not already carry this instance's route.

use crate::config::Settings;
use crate::identity::Identity;
use crate::inject::{self, DomainMode, Reason};
use crate::metrics::Metrics;
use http::header::COOKIE;
use http::{Request, Response};
use hyper::body::Incoming;
use routemap::cookie::route_of;
use routemap::{Live, RouteId, Snapshot};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use stickyroute_relay::body::{self, Body};
use stickyroute_relay::headers::Forwarded;
use stickyroute_relay::request;
use stickyroute_relay::serve::stats::ServeStats;
use stickyroute_relay::serve::{ConnInfo, Handler};
use stickyroute_relay::upstream::forward::{ErrorSource, ForwardError, Upstreams};

/// What every worker's [`Agent`] shares.
pub struct AgentShared {
    pub settings: Settings,
    pub live: Live,
    /// Generation of the map the last "own key missing" warning was about, so it is logged
    /// once per map change rather than per request (and per worker).
    warned_generation: AtomicU64,
}

impl AgentShared {
    pub fn new(settings: Settings, live: Live) -> Self {
        Self {
            settings,
            live,
            warned_generation: AtomicU64::new(0),
        }
    }
}

/// The request path of one worker: the shared state plus this worker's pool to the app.
pub struct Agent {
    pub shared: Arc<AgentShared>,
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
    /// The traffic listener's counters (client faults are counted there).
    pub stats: Arc<ServeStats>,
}

impl std::ops::Deref for Agent {
    type Target = AgentShared;

    fn deref(&self) -> &AgentShared {
        &self.shared
    }
}

/// What was decided from the request, to be applied to the response.
struct Plan {
    route: RouteId,
    request_session: bool,
    host: Option<String>,
    /// The request reached the proxy over HTTPS (for `--cookie-secure auto`).
    https: bool,
}

impl Agent {
    pub fn new(
        shared: Arc<AgentShared>,
        upstreams: Upstreams,
        metrics: Arc<Metrics>,
        stats: Arc<ServeStats>,
    ) -> Self {
        Self {
            shared,
            upstreams,
            metrics,
            stats,
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.settings.identity
    }

    /// This instance's route in `snapshot` for a connection on `local`, falling back to
    /// `--default-route`. A miss is counted, and warned about once per map generation.
    pub fn own_route(&self, snapshot: &Snapshot, local: IpAddr) -> Option<RouteId> {
        let identity = &self.settings.identity;
        if let Some((entry, _)) = identity.lookup(snapshot, local) {
            return Some(entry.route.clone());
        }
        self.metrics.lookup_missed();
        let generation = snapshot.generation();
        if self.warned_generation.swap(generation, Ordering::Relaxed) != generation {
            tracing::warn!(
                address = %identity.addr_key(local),
                name = identity.name_key().map(ToString::to_string),
                map = snapshot.short_hash(),
                generation,
                default_route = self.settings.policy.load().default_route.as_ref().map(RouteId::as_str),
                "this instance is not in the route map; {}",
                if self.settings.policy.load().default_route.is_some() { "using --default-route" } else { "no sticky cookie will be set" }
            );
        }
        let fallback = self.settings.policy.load().default_route.clone();
        if fallback.is_some() {
            self.metrics.default_route_used();
        }
        fallback
    }

    fn plan(&self, request: &Request<Incoming>, local: IpAddr) -> Option<Plan> {
        let path = request.uri().path();
        if self
            .settings
            .policy
            .load()
            .skip_paths
            .iter()
            .any(|prefix| path.starts_with(prefix.as_str()))
        {
            return None;
        }
        let snapshot = self.live.load()?;
        let route = self.own_route(&snapshot, local)?;
        let headers = request.headers();
        let current = self
            .settings
            .policy
            .load()
            .cookie
            .find(headers.get_all(COOKIE).iter().map(|v| v.as_bytes()))
            .and_then(route_of);
        if current == Some(route.as_str()) {
            return None;
        }
        let host = match self.settings.policy.load().attributes.domain {
            DomainMode::RequestHost => {
                inject::request_host(headers, request.uri()).map(str::to_owned)
            }
            _ => None,
        };
        Some(Plan {
            route,
            request_session: self.settings.policy.load().sessions.in_request(headers),
            host,
            https: inject::came_over_https(headers),
        })
    }

    fn apply(&self, plan: Plan, response: &mut Response<Body>) {
        let reason = if plan.request_session {
            Reason::RequestSession
        } else if self
            .settings
            .policy
            .load()
            .sessions
            .created_by(response.headers())
        {
            Reason::ResponseSession
        } else if self.settings.policy.load().track_all {
            Reason::TrackAll
        } else {
            return;
        };
        let set_cookie = self.settings.policy.load().attributes.set_cookie(
            &self.settings.policy.load().cookie,
            &plan.route,
            plan.host.as_deref(),
            plan.https,
        );
        if let Some(set_cookie) = set_cookie {
            inject::inject(response.headers_mut(), set_cookie);
            self.metrics.injected(reason);
        }
    }
}

impl Handler for Agent {
    async fn handle(&self, mut request: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        self.metrics.request();
        if let Some(answer) = request::admit_or_answer(&mut request, &self.stats, conn.remote) {
            return answer;
        }
        self.settings.identity.note_local(conn.local.ip());
        let plan = self.plan(&request, conn.local.ip());
        let origin = conn.origin(Forwarded::BehindProxy);
        let mut response = match self
            .upstreams
            .forward(request, &self.settings.upstream, origin, conn.requester())
            .await
        {
            Ok(response) => body::streamed(response, None),
            Err(error) => return self.failed(&error, conn),
        };
        if let Some(plan) = plan {
            self.apply(plan, &mut response);
        }
        response
    }
}

impl Agent {
    /// The answer when the exchange with the app failed, counted by whose fault it was.
    fn failed(&self, error: &ForwardError, conn: ConnInfo) -> Response<Body> {
        let mut response = body::text(error.status(), format!("{}\n", error.status()));
        match error.source() {
            ErrorSource::Client => {
                if let Some(fault) = error.client_fault() {
                    self.stats.client_fault(fault);
                }
                tracing::debug!(client = %conn.remote, %error, "the client's upload failed; not the app's fault");
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            ErrorSource::Upstream => {
                self.metrics.upstream_error(error);
                tracing::warn!(%error, "app did not answer");
            }
            ErrorSource::Internal => tracing::error!(%error, "cannot forward the request"),
        }
        response
    }
}
