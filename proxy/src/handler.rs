//! The request path: pick the member (sticky value first, then a weighted pick), forward,
//! and on a failed connection try another member when that is allowed.
//!
//! | request | member usable | result |
//! | --- | --- | --- |
//! | sticky route of a member (or a route it was renamed from) | yes | that member (drain members too, and those whose agent drains) |
//! | sticky route of a member | no (error, disabled, unresolved) | `--nofailover`: 503 + `Retry-After` (after `--failover-after`: a weighted pick); else a weighted pick |
//! | sticky route nobody has | — | weighted pick (`--unknown-route reject`: 503) |
//! | no sticky value, or no route in it | — | weighted pick |
//!
//! A member's agent that answers for an app it could not reach (see `agent_said`) is a
//! failed connection to that member, like a refused one; one that says it drains puts its
//! member in drain. Under `--nofailover`, `--failover-after` bounds how long a session
//! waits for its member.

use crate::balance::{account_sticky, pick};
use crate::config::{Settings, UnknownRoute};
use crate::member::{InFlight, Member};
use crate::metrics::{Metrics, Outcome};
use crate::sticky::Sticky;
use crate::table::MemberTable;
use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use routemap::{RouteId, Status};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use stickyroute_relay::access_log::{AccessLog, Fields, UploadCount};
use stickyroute_relay::agent_status;
use stickyroute_relay::body::{self, Body, Meter, OutgoingBody, Streamed};
use stickyroute_relay::clock::now_ms;
use stickyroute_relay::headers::{self, Forwarded};
use stickyroute_relay::request;
use stickyroute_relay::serve::stats::{ServeStats, status_class};
use stickyroute_relay::serve::{ConnInfo, Handler};
use stickyroute_relay::upstream::forward::{
    ErrorSource, ForwardError, Origin, Prepared, UpstreamFailure, Upstreams,
};
use stickyroute_relay::upstream::{PoolError, Requester};

/// At most this many members are tried for one request whose connections fail.
const MAX_ATTEMPTS: usize = 3;

/// The request path of one worker: the shared settings, table and counters, and this
/// worker's pool of member connections.
pub struct Proxy {
    pub settings: Arc<Settings>,
    pub balancer: Arc<crate::balancer::Balancer>,
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
    /// The traffic listener's counters (client faults are counted there).
    pub stats: Arc<ServeStats>,
    /// With `--https-redirect`: the port plain requests are redirected to.
    pub https_redirect: Option<u16>,
    /// With `--access-log`.
    pub access_log: Option<AccessLog>,
}

/// The member chosen for a request, and whether it may be replaced after a failed
/// connection (not for a session pinned by `--nofailover`).
struct Choice {
    index: usize,
    outcome: Outcome,
    may_retry: bool,
    /// Whether the request's session route is not the chosen member's (`None`: no session
    /// route), for the access log.
    route_changed: Option<bool>,
}

/// Why no member was chosen.
struct Refusal {
    outcome: Outcome,
    /// The session's member, when it is the one that cannot serve (for the access log).
    member: Option<(RouteId, Option<SocketAddr>)>,
    retry_after: Option<Duration>,
    message: String,
}

/// The request body not yet sent anywhere.
enum Unsent {
    Body(Incoming),
    Empty,
}

impl Proxy {
    fn choose(&self, table: &MemberTable, sticky: Sticky<'_>, now: u64) -> Result<Choice, Refusal> {
        let members = table.members();
        let weighted = |outcome: Outcome| {
            pick(members, self.settings.routing.load().lbmethod, now, &[])
                .map(|index| Choice {
                    index,
                    outcome,
                    may_retry: true,
                    route_changed: match outcome {
                        Outcome::New | Outcome::Malformed => None,
                        _ => Some(true),
                    },
                })
                .ok_or_else(|| no_member(members))
        };
        let route = match sticky {
            Sticky::Absent => return weighted(Outcome::New),
            Sticky::Malformed => return weighted(Outcome::Malformed),
            Sticky::Route(route) => route,
        };
        let Some(index) = table.sticky_index(route) else {
            if self.settings.routing.load().unknown_route == UnknownRoute::Reject {
                return Err(Refusal {
                    outcome: Outcome::UnknownRoute,
                    member: None,
                    retry_after: None,
                    message: format!("no server has route {route}"),
                });
            }
            return weighted(Outcome::UnknownRoute);
        };
        let member = &members[index];
        let status = member.status_at(now);
        let routing = self.settings.routing.load();
        // Apache's forcerecovery: when every member is in error, try them anyway.
        let usable = status != Status::Disabled
            && member.authority.is_some()
            && (member.is_healthy(now) || members.iter().all(|m| !m.is_healthy(now)));
        if usable {
            account_sticky(members, index, now);
            member.state.sticky_hits.fetch_add(1, Relaxed);
            member.state.found_usable();
            return Ok(Choice {
                index,
                outcome: if status == Status::Drain {
                    Outcome::DrainedHit
                } else {
                    Outcome::Hit
                },
                may_retry: !routing.nofailover || self.failover_due(member, now),
                // A route the member was renamed from is a change the agent will make.
                route_changed: Some(member.route.as_str() != route),
            });
        }
        member.state.found_unusable(now);
        if routing.nofailover && !self.failover_due(member, now) {
            return Err(self.refuse_pinned(member, now));
        }
        weighted(Outcome::Failover)
    }

    /// With `--failover-after`: whether `member` has been unusable long enough for its
    /// sessions to go elsewhere.
    fn failover_due(&self, member: &Member, now: u64) -> bool {
        let after = self.settings.routing.load().failover_after;
        match (after, member.state.unusable_for(now)) {
            (Some(after), Some(down)) => down >= after,
            _ => false,
        }
    }

    /// 503 for a session whose member cannot serve it, under `--nofailover`. `Retry-After`
    /// is when something changes: the member is tried again (its retry time), or the
    /// session goes elsewhere (`--failover-after`), whichever comes first.
    fn refuse_pinned(&self, member: &Member, now: u64) -> Refusal {
        let routing = self.settings.routing.load();
        let retry = member.state.error_remaining(now).unwrap_or(routing.retry);
        let failover = routing
            .failover_after
            .map(|after| after.saturating_sub(member.state.unusable_for(now).unwrap_or_default()));
        Refusal {
            outcome: Outcome::NofailoverRefused,
            member: Some((member.route.clone(), member.address)),
            retry_after: Some(failover.map_or(retry, |left| left.min(retry))),
            message: format!(
                "the server holding this session ({}) is unavailable; try again shortly",
                member.route
            ),
        }
    }

    /// Answers `refusal`, counting its outcome.
    fn refuse(&self, refusal: Refusal) -> Response<Body> {
        let outcome = refusal.outcome;
        self.metrics.outcome(outcome);
        let member = refusal.member.clone();
        let mut response = refusal_response(refusal);
        self.log_fields(&mut response, outcome, || {
            let (route, upstream) = member.unzip();
            Fields {
                route,
                upstream: upstream.flatten(),
                ..Fields::default()
            }
        });
        response
    }

    /// Sends the request to the chosen member, and to others when a connection fails and
    /// the session allows it. Each request's outcome is counted once, when it ends: a
    /// session moved to another member after a failed connection counts as a failover.
    async fn forward(
        &self,
        table: Arc<MemberTable>,
        request: Request<Incoming>,
        origin: Origin,
        requester: Requester,
        mut choice: Choice,
    ) -> Response<Body> {
        let (mut head, body) = Prepared::new(request, origin);
        let mut unsent = Unsent::Body(body);
        let mut tried: Vec<usize> = Vec::new();
        let mut outcome = choice.outcome;
        loop {
            let member = &table.members()[choice.index];
            let Some(authority) = member.authority.as_ref() else {
                return self.refuse(no_member(table.members()));
            };
            // The request is in flight on this member until the last of the upload, the
            // response body and this function lets go of it, whichever path it takes.
            let meter: Arc<dyn Meter> = InFlight::start(member, self.settings.routing.load().retry);
            let (outgoing, reclaim) = match unsent {
                Unsent::Body(body) => self.upstreams.upload(body, Some(meter.clone())),
                Unsent::Empty => (OutgoingBody::empty(Some(meter.clone())), None),
            };
            let may_retry =
                choice.may_retry && tried.len() + 1 < MAX_ATTEMPTS.min(table.members().len());
            let state = &member.state;
            let sent = Instant::now();
            let error = match self
                .upstreams
                .send(&mut head, outgoing, authority, requester)
                .await
                .and_then(|response| agent_said(response, member, authority))
            {
                Ok(response) => {
                    let head_time = sent.elapsed();
                    state.head_time.observe(head_time);
                    state.statuses[status_class(response.status())].fetch_add(1, Relaxed);
                    if self
                        .settings
                        .routing
                        .load()
                        .failonstatus
                        .contains(&response.status())
                    {
                        state.failed(UpstreamFailure::Status);
                        state.mark_error(self.settings.routing.load().retry);
                        tracing::warn!(route = %member.route, status = %response.status(), "member answered a failonstatus code; in error for the retry time");
                    } else {
                        state.mark_ok();
                    }
                    self.metrics.outcome(outcome);
                    let uploaded = self.access_log.as_ref().map(|_| meter.clone());
                    let mut response = body::streamed(response, Some(meter));
                    self.log_fields(&mut response, outcome, || Fields {
                        route: Some(member.route.clone()),
                        upstream: member.address,
                        upstream_head: Some(head_time),
                        route_changed: choice.route_changed,
                        uploaded,
                        ..Fields::default()
                    });
                    return response;
                }
                Err(error) => error,
            };
            // The access log's count of this attempt's upload, without keeping the request
            // in flight on the member.
            let uploaded = meter.uploaded();
            drop(meter);
            match error.source() {
                ErrorSource::Client => {
                    if let Some(fault) = error.client_fault() {
                        self.stats.client_fault(fault);
                    }
                    tracing::debug!(client = %origin.client, route = %member.route, %error, "the client's upload failed; not the member's fault");
                    return self.failed(&error, outcome, member, choice.route_changed, uploaded);
                }
                ErrorSource::Internal => {
                    tracing::error!(route = %member.route, %error, "cannot forward the request");
                    return self.failed(&error, outcome, member, choice.route_changed, uploaded);
                }
                ErrorSource::Upstream => {}
            }
            state.failed(error.failure().unwrap_or(UpstreamFailure::Reset));
            state.mark_error(self.settings.routing.load().retry);
            if error.is_connect() {
                // Whatever its agent said about draining, the next one will say again.
                member.agent_says_draining(false);
            }
            tracing::warn!(route = %member.route, %error, retry = ?self.settings.routing.load().retry, "member failed; in error for the retry time");
            // Only a request none of whose body was sent goes elsewhere.
            let reclaimed = match reclaim {
                None => Some(Unsent::Empty),
                Some(mut reclaim) => reclaim.try_recv().ok().map(Unsent::Body),
            };
            // An agent whose app is down may have read some of the body: the member is in
            // error all the same, but the request cannot be sent again.
            if reclaimed.is_none() && error.is_connect() {
                return self.failed(&error, outcome, member, choice.route_changed, uploaded);
            }
            let next = match (error.is_connect() && may_retry, reclaimed) {
                (true, Some(body)) => {
                    tried.push(choice.index);
                    pick(
                        table.members(),
                        self.settings.routing.load().lbmethod,
                        now_ms(),
                        &tried,
                    )
                    .map(|index| (index, body))
                }
                _ => None,
            };
            match next {
                Some((index, body)) => {
                    self.metrics.retry();
                    if matches!(outcome, Outcome::Hit | Outcome::DrainedHit) {
                        outcome = Outcome::Failover;
                    }
                    unsent = body;
                    choice = Choice {
                        index,
                        outcome,
                        may_retry: true,
                        route_changed: choice.route_changed.map(|_| true),
                    };
                }
                // A session pinned by --nofailover whose member just went away.
                None if !choice.may_retry && error.is_connect() => {
                    return self.refuse(self.refuse_pinned(member, now_ms()));
                }
                None if error.is_connect() => return self.refuse(no_member(table.members())),
                None => {
                    return self.failed(&error, outcome, member, choice.route_changed, uploaded);
                }
            }
        }
    }

    /// The answer to an exchange that failed for good, counted and logged with its member.
    fn failed(
        &self,
        error: &ForwardError,
        outcome: Outcome,
        member: &Member,
        route_changed: Option<bool>,
        uploaded: u64,
    ) -> Response<Body> {
        self.metrics.outcome(outcome);
        let mut response = error_response(error);
        self.log_fields(&mut response, outcome, || Fields {
            route: Some(member.route.clone()),
            upstream: member.address,
            route_changed,
            uploaded: (uploaded > 0).then(|| {
                let count = UploadCount::default();
                count.add(uploaded);
                Arc::new(count) as Arc<dyn Meter>
            }),
            ..Fields::default()
        });
        response
    }

    /// With an access log: what the proxy adds to the request's line.
    fn log_fields(
        &self,
        response: &mut Response<Body>,
        outcome: Outcome,
        fields: impl FnOnce() -> Fields,
    ) {
        if self.access_log.is_some() {
            let fields = Fields {
                sticky: Some(outcome.as_str()),
                ..fields()
            };
            body::set_log_fields(response, fields);
        }
    }
}

/// What a member's agent says about its member on an answer
/// ([`agent_status::MEMBER_STATE_HEADER`], removed here): an answer for an app it could not
/// reach delivered nothing, and is taken as a failed connection to the member; a draining
/// agent puts its member in drain; an answer without the header takes it out of an agent's
/// drain.
fn agent_said(
    mut response: Response<Streamed>,
    member: &Member,
    authority: &Authority,
) -> Result<Response<Streamed>, ForwardError> {
    let state = response
        .headers_mut()
        .remove(agent_status::MEMBER_STATE_HEADER);
    let state = state.as_ref().map(HeaderValue::as_bytes);
    if state == Some(agent_status::UNREACHABLE.as_bytes()) {
        return Err(ForwardError::Connect {
            upstream: authority.clone(),
            source: PoolError::Connect(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "its agent could not reach the app",
            )),
        });
    }
    member.agent_says_draining(state == Some(agent_status::DRAINING.as_bytes()));
    Ok(response)
}

fn no_member(members: &[Arc<Member>]) -> Refusal {
    Refusal {
        outcome: Outcome::NoMember,
        member: None,
        retry_after: Some(Duration::from_secs(5)),
        message: if members.is_empty() {
            "no servers are configured".to_owned()
        } else {
            "no server is available".to_owned()
        },
    }
}

fn refusal_response(refusal: Refusal) -> Response<Body> {
    let mut response = body::text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("503 Service Unavailable: {}\n", refusal.message),
    );
    if let Some(after) = refusal.retry_after {
        let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}

/// The status of a failed exchange, with a short body. After a client's broken or stalled
/// upload the connection is closed: what is left of the body cannot be trusted.
fn error_response(error: &ForwardError) -> Response<Body> {
    let mut response = body::text(error.status(), format!("{}\n", error.status()));
    if error.source() == ErrorSource::Client {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

impl Handler for Proxy {
    fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    fn expects_proxy_header(&self, peer: IpAddr) -> bool {
        let routing = self.settings.routing.load();
        routing.proxy_protocol
            && stickyroute_relay::net::any_contains(&routing.trusted_proxies, peer.to_canonical())
    }

    fn client_address(&self, request: &Request<Incoming>, conn: &ConnInfo) -> IpAddr {
        let routing = self.settings.routing.load();
        headers::client_address(
            conn.remote.ip(),
            request.headers(),
            &routing.trusted_proxies,
        )
    }

    async fn handle(&self, mut request: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let trusted_peer = {
            let routing = self.settings.routing.load();
            stickyroute_relay::net::any_contains(&routing.trusted_proxies, conn.remote.ip())
        };
        // Not when a trusted hop in front terminated TLS: the client is on https already.
        if let (Some(port), None) = (self.https_redirect, &conn.tls)
            && !(trusted_peer && headers::came_over_https(request.headers()))
        {
            return crate::redirect::to_https(&request, &conn, port);
        }
        if let Some(answer) = request::admit_or_answer(&mut request, &self.stats, conn.remote) {
            return answer;
        }
        let Some(table) = self.balancer.table() else {
            return self.refuse(Refusal {
                outcome: Outcome::NoMember,
                member: None,
                retry_after: Some(Duration::from_secs(5)),
                message: "no route map loaded yet".to_owned(),
            });
        };
        let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let sticky = self
            .settings
            .routing
            .load()
            .sticky
            .extract(path, request.headers());
        match self.choose(&table, sticky, now_ms()) {
            Ok(choice) => {
                let forwarded = if trusted_peer {
                    Forwarded::BehindProxy
                } else {
                    Forwarded::Edge
                };
                let (origin, requester) = (conn.origin(forwarded), conn.requester());
                self.forward(table, request, origin, requester, choice)
                    .await
            }
            Err(refusal) => self.refuse(refusal),
        }
    }
}
