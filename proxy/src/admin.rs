//! The proxy's admin endpoints: `/healthz`, `/readyz`, `/metrics`, `/status`.

use crate::balancer::Balancer;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::overrides::store::Store;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use routemap::{Live, MapStatus};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use stickyroute_relay::access_log::AccessLog;
use stickyroute_relay::admin;
use stickyroute_relay::body::{self, Body};
use stickyroute_relay::clock::now_ms;
use stickyroute_relay::process::lifecycle::Lifecycle;
use stickyroute_relay::serve::stats::ServeStats;
use stickyroute_relay::serve::{ConnInfo, Handler};
use stickyroute_relay::tls::TlsServer;
use stickyroute_relay::tls::certs::CertStatus;

pub struct ProxyAdmin {
    pub settings: Arc<Settings>,
    pub balancer: Arc<Balancer>,
    pub live: Live,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    /// The balancer-manager's nonce: here, not in the settings, so a reload keeps it (who
    /// may use the balancer-manager is `settings.access`, which a reload replaces).
    pub nonce: crate::manager::access::Nonce,
    /// The admin listener's and the traffic listeners' connection counters.
    pub admin_stats: Arc<ServeStats>,
    pub traffic_stats: Arc<ServeStats>,
    /// TLS termination, when configured: its certificates and handshake counters.
    pub tls: Option<Arc<TlsServer>>,
    pub access_log: Option<AccessLog>,
    /// `--overrides-file` or `--overrides-configmap`: where balancer-manager changes are kept
    /// for every proxy.
    pub overrides_store: Option<crate::overrides::store::Store>,
    /// The replicas sharing this balancer, as last read (see [`crate::replicas`]).
    pub replicas: Arc<crate::replicas::Replicas>,
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    /// This process, as the other replicas tell it from themselves (random at each start).
    instance: String,
    balancer: BalancerInfo,
    map: MapStatus,
    /// Every member; left out with `?members=false` (what the replicas read of each other:
    /// with a large map the members are most of the answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<Vec<MemberInfo>>,
    /// Where overrides are kept and the version applied here.
    overrides: StatusOverrides,
    draining: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<TlsStatus>,
}

#[derive(Serialize)]
struct StatusOverrides {
    /// `"process"`, `"file"` or `"configmap"`.
    store: &'static str,
    version: u64,
}

/// TLS as `/status` shows it: every configured pair, with the error of files that hold
/// something invalid now (the previous pair is still served then).
#[derive(Serialize)]
struct TlsStatus {
    handshake_timeout_seconds: f64,
    certificates: Vec<CertStatus>,
}

/// The balancer's settings, as shown in `/status` and the balancer-manager.
#[derive(Serialize)]
pub struct BalancerInfo {
    pub stickysession: String,
    pub nofailover: bool,
    pub lbmethod: crate::config::LbMethod,
    pub unknown_route: crate::config::UnknownRoute,
    pub retry_seconds: u64,
    /// `--failover-after`, when set.
    pub failover_after_seconds: Option<f64>,
    pub table_swaps: u64,
}

/// One member as operators see it.
#[derive(Serialize)]
pub struct MemberInfo {
    pub route: String,
    pub key: String,
    pub address: Option<String>,
    pub loadfactor: u8,
    pub map_loadfactor: u8,
    pub status: routemap::Status,
    pub map_status: routemap::Status,
    /// The member is in drain because its agent says it drains.
    pub agent_draining: bool,
    /// The member is in drain because its pod is terminating (`--member-service`).
    pub terminating: bool,
    pub healthy: bool,
    /// How long the member has been unusable for its sessions (what `--failover-after`
    /// counts), in milliseconds.
    pub unusable_ms: Option<u64>,
    pub health_since_ms: u64,
    pub requests: u64,
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Requests in flight.
    pub busy: i64,
    pub sticky_hits: u64,
    pub lbstatus: i64,
    /// Requests in the last whole second.
    pub rate_per_s: u64,
    /// The member's responses by status class, since start.
    pub responses: ResponseClasses,
    /// Time to the member's response head, since start (from the latency histogram, so
    /// as precise as its buckets).
    pub head_p50_ms: Option<f64>,
    pub head_p99_ms: Option<f64>,
    /// The last failed exchange's kind (connect, timeout, reset, protocol, failonstatus)
    /// and wall-clock time.
    pub last_error: Option<&'static str>,
    pub last_error_at_ms: Option<u64>,
}

/// Responses by status class.
#[derive(Serialize, Default, Clone, Copy)]
pub struct ResponseClasses {
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirection: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

impl ResponseClasses {
    pub fn as_array(&self) -> [u64; 5] {
        [
            self.informational,
            self.success,
            self.redirection,
            self.client_error,
            self.server_error,
        ]
    }
}

impl MemberInfo {
    pub fn of(m: &crate::member::Member, now: u64) -> Self {
        Self {
            route: m.route.to_string(),
            key: m.key.to_string(),
            address: m.address.map(|a| a.to_string()),
            loadfactor: m.loadfactor(),
            map_loadfactor: m.map_loadfactor.get(),
            status: m.status_at(now),
            map_status: m.map_status,
            agent_draining: m.state.agent_draining(now),
            terminating: m.terminating,
            healthy: m.is_healthy(now),
            unusable_ms: m
                .state
                .unusable_for(now)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            health_since_ms: m.state.health_since_at(now),
            requests: m.state.requests.load(Relaxed),
            errors: m.state.errors.load(Relaxed),
            bytes_in: m.state.bytes_in.load(Relaxed),
            bytes_out: m.state.bytes_out.load(Relaxed),
            busy: m.state.busy.load(Relaxed),
            sticky_hits: m.state.sticky_hits.load(Relaxed),
            lbstatus: m.state.lbstatus.load(Relaxed),
            rate_per_s: m.state.rate(),
            responses: {
                let class = |i: usize| m.state.statuses[i].load(Relaxed);
                ResponseClasses {
                    informational: class(0),
                    success: class(1),
                    redirection: class(2),
                    client_error: class(3),
                    server_error: class(4),
                }
            },
            head_p50_ms: m.state.head_time.quantile(0.5).map(millis),
            head_p99_ms: m.state.head_time.quantile(0.99).map(millis),
            last_error: m.state.last_failure().map(|(kind, _)| kind.as_str()),
            last_error_at_ms: m.state.last_failure().map(|(_, at)| at),
        }
    }
}

/// Milliseconds, to a microsecond.
fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl ProxyAdmin {
    pub fn balancer_info(&self) -> BalancerInfo {
        BalancerInfo {
            stickysession: self.settings.routing.load().sticky.describe(),
            nofailover: self.settings.routing.load().nofailover,
            lbmethod: self.settings.routing.load().lbmethod,
            unknown_route: self.settings.routing.load().unknown_route,
            retry_seconds: self.settings.routing.load().retry.as_secs(),
            failover_after_seconds: self
                .settings
                .routing
                .load()
                .failover_after
                .map(|d| d.as_secs_f64()),
            table_swaps: self.balancer.swaps(),
        }
    }

    fn status(&self, with_members: bool) -> Status {
        let now = now_ms();
        let members = with_members.then(|| {
            self.balancer
                .table()
                .map(|t| t.members().iter().map(|m| MemberInfo::of(m, now)).collect())
                .unwrap_or_default()
        });
        Status {
            version: env!("CARGO_PKG_VERSION"),
            instance: self.replicas.instance().to_owned(),
            balancer: self.balancer_info(),
            map: self.live.status(),
            members,
            overrides: StatusOverrides {
                store: self.overrides_store.as_ref().map_or("process", Store::kind),
                version: self.balancer.overrides().version,
            },
            draining: self.lifecycle.is_draining(),
            tls: self.tls.as_ref().map(|tls| TlsStatus {
                handshake_timeout_seconds: tls.handshake_timeout().as_secs_f64(),
                certificates: tls.certs().status(),
            }),
        }
    }

    fn readyz(&self) -> Response<Body> {
        let now = now_ms();
        let mut problems = Vec::new();
        match self.balancer.table() {
            None => problems.push("no route map loaded yet"),
            Some(table)
                if !table
                    .members()
                    .iter()
                    .any(|m| m.status() != routemap::Status::Disabled && m.is_healthy(now)) =>
            {
                problems.push("no member is usable")
            }
            Some(_) => {}
        }
        if self.lifecycle.is_draining() {
            problems.push("shutting down");
        }
        admin::readyz(&problems)
    }
}

impl Handler for ProxyAdmin {
    async fn handle(&self, request: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let path = request.uri().path();
        if path == "/balancer-manager" || path.starts_with("/balancer-manager/") {
            return self.manager(request, conn).await;
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return body::text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match request.uri().path() {
            "/healthz" => admin::healthz(),
            "/readyz" => self.readyz(),
            "/metrics" => {
                let table = self.balancer.table();
                let mut text = self.metrics.render(
                    table.as_deref(),
                    &self.live.status(),
                    self.balancer.swaps(),
                    self.lifecycle.is_draining(),
                );
                admin::serve_metrics(&mut text, &self.traffic_stats, &self.admin_stats);
                if let Some(tls) = &self.tls {
                    tls.render(&mut text);
                }
                if let Some(log) = &self.access_log {
                    log.render(&mut text);
                }
                admin::metrics(text)
            }
            "/status" => {
                let with_members = request.uri().query() != Some("members=false");
                body::json(StatusCode::OK, &self.status(with_members))
            }
            _ => admin::not_found(),
        }
    }
}
