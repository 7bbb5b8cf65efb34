//! Reads every replica's `/status` each [`POLL_INTERVAL`] and publishes the round.
//!
//! Each read has a deadline for the whole answer, head and body, and its body a size limit:
//! a replica that accepts and stalls is reported as unreachable and the round still ends
//! on time. What a replica reports is checked as it is read (a map hash is 64 lower-case
//! hex digits, the texts are short) before anything is shown.

use super::registry::{self, Registered};
use super::{FORGET_AFTER, POLL_INTERVAL, Replica, Replicas, Round, STATUS_TIMEOUT};
use crate::manager::agents::shorten;
use crate::member::wall_ms;
use crate::overrides::file_store::FileStore;
use http::uri::Authority;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use stickyroute_relay::upstream::forward::Upstreams;

/// Largest `/status?members=false` body read from a replica: far more than it needs.
const MAX_STATUS_BYTES: usize = 64 * 1024;

/// Where the replicas are listed.
pub enum Peers {
    /// The registry beside the overrides file.
    File(Arc<FileStore>),
    /// The proxies' Service's endpoints, on this admin port.
    #[cfg(feature = "kubernetes")]
    Service {
        endpoints:
            tokio::sync::watch::Receiver<Option<Arc<crate::membership::endpoint_slices::View>>>,
        admin_port: u16,
    },
}

impl Peers {
    /// The replicas as listed now.
    async fn list(&self) -> Result<Vec<Registered>, String> {
        match self {
            Peers::File(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || registry::read(&store))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
            #[cfg(feature = "kubernetes")]
            Peers::Service {
                endpoints,
                admin_port,
            } => {
                let Some(view) = endpoints.borrow().clone() else {
                    return Err("the proxies' EndpointSlices are not listed yet".to_owned());
                };
                // The view has each endpoint under its pod's name and its hostname: one
                // replica per address, named by the first name in order.
                let mut by_ip = std::collections::BTreeMap::new();
                let mut names: Vec<_> = view.iter().collect();
                names.sort_by(|a, b| a.0.cmp(b.0));
                for (name, condition) in names {
                    by_ip.entry(condition.ip).or_insert_with(|| name.clone());
                }
                Ok(by_ip
                    .into_iter()
                    .map(|(ip, name)| Registered {
                        name,
                        admin: SocketAddr::new(ip, *admin_port),
                    })
                    .collect())
            }
        }
    }

    fn forget(&self, admin: SocketAddr) {
        #[allow(irrefutable_let_patterns)]
        if let Peers::File(store) = self {
            let store = store.clone();
            tokio::task::spawn_blocking(move || match registry::remove(&store, admin) {
                Ok(()) => {
                    tracing::info!(%admin, "a replica that stopped answering is removed from the registry")
                }
                Err(error) => {
                    tracing::warn!(%admin, "could not remove a replica that stopped answering: {error}")
                }
            });
        }
    }
}

pub async fn poll(replicas: Arc<Replicas>, peers: Peers, upstreams: Upstreams) {
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let previous: HashMap<String, Option<u64>> = replicas
            .round()
            .replicas
            .iter()
            .map(|r| (r.admin.clone(), r.unreachable_since_ms))
            .collect();
        let (error, listed) = match peers.list().await {
            Ok(listed) => (None, listed),
            // The last list stays shown with the error beside it.
            Err(error) => (
                Some(error),
                replicas
                    .round()
                    .replicas
                    .iter()
                    .filter_map(|r| {
                        Some(Registered {
                            name: r.name.clone(),
                            admin: r.admin.parse().ok()?,
                        })
                    })
                    .collect(),
            ),
        };
        let reads = listed.into_iter().map(|peer| {
            let upstreams = &upstreams;
            let instance = replicas.instance();
            async move {
                let deadline = STATUS_TIMEOUT;
                let report = tokio::time::timeout(deadline, read(upstreams, peer.admin))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "{}/status did not answer within {deadline:?}",
                            peer.admin
                        ))
                    });
                replica(peer, report, instance)
            }
        });
        let now = wall_ms();
        let mut read = futures_util::future::join_all(reads).await;
        for replica in &mut read {
            if replica.error.is_some() {
                let since = previous
                    .get(&replica.admin)
                    .copied()
                    .flatten()
                    .unwrap_or(now);
                replica.unreachable_since_ms = Some(since);
                if now.saturating_sub(since) >= FORGET_AFTER.as_millis() as u64
                    && let Ok(admin) = replica.admin.parse()
                {
                    peers.forget(admin);
                }
            }
        }
        replicas.publish(Round {
            error,
            replicas: read,
        });
    }
}

/// What is read of a replica's `/status`: only what the Replicas section shows.
#[derive(Deserialize)]
struct PeerStatus {
    version: String,
    instance: String,
    map: PeerMap,
    overrides: PeerOverrides,
    draining: bool,
}

#[derive(Deserialize)]
struct PeerMap {
    hash: Option<String>,
    loaded_at: Option<String>,
}

#[derive(Deserialize)]
struct PeerOverrides {
    version: u64,
}

/// What a good `/status` gives.
#[derive(Debug, PartialEq, Eq)]
struct Reported {
    version: String,
    instance: String,
    map_hash: Option<String>,
    map_loaded_at_ms: Option<u64>,
    overrides_version: u64,
    draining: bool,
}

async fn read(upstreams: &Upstreams, admin: SocketAddr) -> Result<Reported, String> {
    let authority = Authority::try_from(admin.to_string()).map_err(|e| e.to_string())?;
    let response = upstreams
        .get(&authority, "/status?members=false", STATUS_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{admin}/status answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_STATUS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading {admin}/status: {e}"))?
        .to_bytes();
    parse(admin, &body)
}

/// Parses and checks a replica's `/status`.
fn parse(admin: SocketAddr, body: &[u8]) -> Result<Reported, String> {
    let refused = |why: &str| format!("{admin}/status is refused: {}", shorten(why));
    let status: PeerStatus = serde_json::from_slice(body).map_err(|e| refused(&e.to_string()))?;
    let short = |text: &str| text.chars().count() <= 64;
    if !short(&status.version) || !short(&status.instance) {
        return Err(refused(
            "its version or instance is longer than 64 characters",
        ));
    }
    if let Some(hash) = &status.map.hash
        && !(hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        return Err(refused("its map hash is not 64 lower-case hex digits"));
    }
    let map_loaded_at_ms = match &status.map.loaded_at {
        None => None,
        Some(at) => Some(
            humantime::parse_rfc3339(at)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .ok_or_else(|| refused("its map's loaded_at is not an RFC 3339 time"))?,
        ),
    };
    Ok(Reported {
        version: status.version,
        instance: status.instance,
        map_hash: status.map.hash,
        map_loaded_at_ms,
        overrides_version: status.overrides.version,
        draining: status.draining,
    })
}

fn replica(peer: Registered, report: Result<Reported, String>, instance: &str) -> Replica {
    let checked_at_ms = wall_ms();
    match report {
        Ok(reported) => Replica {
            name: peer.name,
            admin: peer.admin.to_string(),
            this: reported.instance == instance,
            version: Some(reported.version),
            map_hash: reported.map_hash,
            map_loaded_at_ms: reported.map_loaded_at_ms,
            overrides_version: Some(reported.overrides_version),
            draining: Some(reported.draining),
            error: None,
            checked_at_ms,
            unreachable_since_ms: None,
        },
        Err(error) => Replica {
            name: peer.name,
            admin: peer.admin.to_string(),
            this: false,
            version: None,
            map_hash: None,
            map_loaded_at_ms: None,
            overrides_version: None,
            draining: None,
            error: Some(error),
            checked_at_ms,
            unreachable_since_ms: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_of(body: &str) -> Result<Reported, String> {
        parse(SocketAddr::from(([127, 0, 0, 2], 9900)), body.as_bytes())
    }

    #[test]
    fn a_good_status_gives_its_map_and_overrides() {
        let hash = "ab".repeat(32);
        let reported = parse_of(&format!(
            r#"{{"version":"0.1.0","instance":"1f2e","draining":false,"members":[],
                "map":{{"hash":"{hash}","generation":3,"loaded_at":"2026-12-04T21:00:00.250Z"}},
                "overrides":{{"store":"file","version":9}}}}"#
        ))
        .unwrap();
        assert_eq!(reported.map_hash.as_deref(), Some(hash.as_str()));
        assert_eq!(reported.map_loaded_at_ms, Some(1_796_418_000_250));
        assert_eq!(reported.overrides_version, 9);
        assert_eq!(reported.instance, "1f2e");
        let this = replica(
            Registered {
                name: "a".to_owned(),
                admin: SocketAddr::from(([127, 0, 0, 2], 9900)),
            },
            Ok(reported),
            "1f2e",
        );
        assert!(this.this);
    }

    #[test]
    fn a_bad_status_is_refused_with_its_reason_kept_short() {
        let good_map = format!(r#""map":{{"hash":"{}"}}"#, "a".repeat(64));
        for (body, reason) in [
            ("not json".to_owned(), "expected"),
            (
                format!(
                    r#"{{"version":"1","instance":"i","draining":false,"overrides":{{"version":1}},"map":{{"hash":"{}"}}}}"#,
                    "A".repeat(64)
                ),
                "64 lower-case hex",
            ),
            (
                format!(
                    r#"{{"version":"{}","instance":"i","draining":false,"overrides":{{"version":1}},{good_map}}}"#,
                    "é".repeat(100_000)
                ),
                "longer than 64",
            ),
            (
                r#"{"version":"1","instance":"i","draining":false,"overrides":{"version":1},"map":{"hash":null,"loaded_at":"yesterday"}}"#.to_owned(),
                "RFC 3339",
            ),
        ] {
            let error = parse_of(&body).unwrap_err();
            assert!(error.starts_with("127.0.0.2:9900/status is refused: "), "{error}");
            assert!(error.contains(reason), "{error}");
            assert!(error.chars().count() < 400, "{}", error.chars().count());
        }
    }
}
