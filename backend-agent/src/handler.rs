//! The request path: forward to the app, and set the sticky cookie when the exchange
//! belongs to a session and the client does not already carry this instance's route.

use crate::app_health::AppHealth;
use crate::config::Settings;
use crate::drain::Drain;
use crate::identity::Identity;
use crate::inject::{self, DomainMode, Reason};
use crate::metrics::Metrics;
use http::header::{COOKIE, HeaderName};
use http::{Request, Response};
use hyper::body::Incoming;
use routemap::cookie::route_of;
use routemap::{Live, RouteId, Snapshot};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use stickyroute_relay::access_log::{AccessLog, Fields, UploadCount};
use stickyroute_relay::agent_status;
use stickyroute_relay::body::{self, Body, Meter};
use stickyroute_relay::headers::Forwarded;
use stickyroute_relay::request;
use stickyroute_relay::serve::stats::ServeStats;
use stickyroute_relay::serve::{ConnInfo, Handler};
use stickyroute_relay::upstream::forward::{ErrorSource, ForwardError, Upstreams};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const MEMBER_STATE: HeaderName = HeaderName::from_static(agent_status::MEMBER_STATE_HEADER);

/// Tells the proxy in front that this request never reached the app.
fn mark_unreachable(response: &mut Response<Body>) {
    response.headers_mut().insert(
        MEMBER_STATE,
        http::HeaderValue::from_static(agent_status::UNREACHABLE),
    );
}

/// What every worker's [`Agent`] shares.
pub struct AgentShared {
    pub settings: Settings,
    pub live: Live,
    /// With `--access-log`.
    pub access_log: Option<AccessLog>,
    /// Whether the app can be reached.
    pub app: Arc<AppHealth>,
    /// Whether this member is draining.
    pub drain: Drain,
    /// Generation of the map the last "own key missing" warning was about, so it is logged
    /// once per map change rather than per request (and per worker).
    warned_generation: AtomicU64,
}

impl AgentShared {
    pub fn new(settings: Settings, live: Live, access_log: Option<AccessLog>) -> Self {
        Self {
            drain: Drain::new(settings.drain),
            settings,
            live,
            access_log,
            app: Arc::new(AppHealth::default()),
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

/// Why no cookie is set, decided from the request (the access log's `cookie_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoCookie {
    /// The path is under `--skip-path`.
    SkipPath,
    /// No map yet, or this instance is not in it (and no `--default-route`).
    NoRoute,
    /// The client already carries this instance's route.
    HasRoute,
    /// Neither the request nor the response belongs to a session (and no `--track-all`).
    NoSession,
}

impl NoCookie {
    fn as_str(self) -> &'static str {
        match self {
            NoCookie::SkipPath => "skip_path",
            NoCookie::NoRoute => "no_route",
            NoCookie::HasRoute => "has_route",
            NoCookie::NoSession => "no_session",
        }
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

    fn plan(&self, request: &Request<Incoming>, local: IpAddr) -> Result<Plan, NoCookie> {
        let path = request.uri().path();
        if self
            .settings
            .policy
            .load()
            .skip_paths
            .iter()
            .any(|prefix| path.starts_with(prefix.as_str()))
        {
            return Err(NoCookie::SkipPath);
        }
        let snapshot = self.live.load().ok_or(NoCookie::NoRoute)?;
        let route = self.own_route(&snapshot, local).ok_or(NoCookie::NoRoute)?;
        let headers = request.headers();
        let current = self
            .settings
            .policy
            .load()
            .cookie
            .find(headers.get_all(COOKIE).iter().map(|v| v.as_bytes()))
            .and_then(route_of);
        if current == Some(route.as_str()) {
            return Err(NoCookie::HasRoute);
        }
        let host = match self.settings.policy.load().attributes.domain {
            DomainMode::RequestHost => {
                inject::request_host(headers, request.uri()).map(str::to_owned)
            }
            _ => None,
        };
        Ok(Plan {
            route,
            request_session: self.settings.policy.load().sessions.in_request(headers),
            host,
            https: inject::came_over_https(headers),
        })
    }

    /// Sets the cookie if the exchange belongs to a session; returns why it was set, or
    /// why not.
    fn apply(&self, plan: &Plan, response: &mut Response<Body>) -> Result<Reason, NoCookie> {
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
            return Err(NoCookie::NoSession);
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
        Ok(reason)
    }
}

impl Handler for Agent {
    async fn handle(&self, mut request: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        self.metrics.request();
        if let Some(answer) = request::admit_or_answer(&mut request, &self.stats, conn.remote) {
            return answer;
        }
        if self.app.check_failing() {
            self.app.unreachable(&"the app fails its health check");
            let mut response = body::text(
                http::StatusCode::BAD_GATEWAY,
                "502 Bad Gateway: the app fails its health check\n",
            );
            mark_unreachable(&mut response);
            return response;
        }
        self.settings.identity.note_local(conn.local.ip());
        let plan = self.plan(&request, conn.local.ip());
        if self.drain.is_draining() && is_session_request(&plan) {
            self.drain.session_seen();
        }
        let origin = conn.origin(Forwarded::BehindProxy);
        let uploaded = self
            .access_log
            .as_ref()
            .map(|_| Arc::new(UploadCount::default()));
        let meter = uploaded.clone().map(|u| u as Arc<dyn Meter>);
        let sent = Instant::now();
        let mut response = match self
            .upstreams
            .forward(
                request,
                &self.settings.upstream,
                origin,
                conn.requester(),
                meter,
            )
            .await
        {
            Ok(mut response) => {
                self.app.reached();
                // Only the agent says what state its member is in.
                let headers = response.headers_mut();
                headers.remove(MEMBER_STATE);
                if self.drain.is_draining() {
                    headers.insert(
                        MEMBER_STATE,
                        http::HeaderValue::from_static(agent_status::DRAINING),
                    );
                }
                body::streamed(response, None)
            }
            Err(error) => return self.failed(&error, conn),
        };
        let head_time = sent.elapsed();
        let decision = plan.and_then(|plan| {
            self.apply(&plan, &mut response)
                .map(|reason| (plan.route, reason))
        });
        if self.access_log.is_some() {
            let (cookie, reason, route) = match decision {
                Ok((route, reason)) => ("issued", reason.as_str(), Some(route)),
                Err(no) => ("none", no.as_str(), None),
            };
            let fields = Fields {
                route,
                upstream_head: Some(head_time),
                cookie: Some(cookie),
                cookie_reason: Some(reason),
                uploaded: uploaded.map(|u| u as Arc<dyn Meter>),
                ..Fields::default()
            };
            body::set_log_fields(&mut response, fields);
        }
        response
    }

    fn access_log(&self) -> Option<&AccessLog> {
        self.shared.access_log.as_ref()
    }

    /// The proxy in front appends the client it saw to `X-Forwarded-For`: the last entry.
    fn client_address(&self, request: &Request<Incoming>, conn: &ConnInfo) -> IpAddr {
        stickyroute_relay::headers::list_items(request.headers(), X_FORWARDED_FOR)
            .last()
            .and_then(|hop| hop.parse::<IpAddr>().ok())
            .unwrap_or_else(|| conn.remote.ip())
            .to_canonical()
    }
}

/// Whether a request belongs to a session, for the drain: it carries this instance's route
/// or one of the app's session cookies.
fn is_session_request(plan: &Result<Plan, NoCookie>) -> bool {
    match plan {
        Ok(plan) => plan.request_session,
        Err(no) => *no == NoCookie::HasRoute,
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
                if error.is_connect() {
                    // Never delivered: the proxy may send it to another member.
                    self.app.unreachable(error);
                    mark_unreachable(&mut response);
                } else {
                    tracing::warn!(%error, "app did not answer");
                }
            }
            ErrorSource::Internal => tracing::error!(%error, "cannot forward the request"),
        }
        response
    }
}
