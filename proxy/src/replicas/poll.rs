//! Reads every replica's `/status` each [`POLL_INTERVAL`] and publishes the round.
//!
//! Each read has a deadline for the whole answer, head and body, and its body a size limit:
//! a replica that accepts and stalls is reported as unreachable and the round still ends
//! on time. What a replica reports is checked as it is read (a map hash is 64 lower-case
//! hex digits, the texts are short, a load time is not in the future) before anything is
//! shown. A replica that answers something this proxy cannot take (an older version, say)
//! is listed as answering, with the reason, not as unreachable.

use super::registry::{self, Me, Registered};
use super::{POLL_INTERVAL, Replica, Replicas, Round, STATUS_TIMEOUT};
use crate::manager::agents::shorten;
use crate::member::wall_ms;
use crate::overrides::file_store::FileStore;
use crate::overrides::store::StoreError;
use http::uri::Authority;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stickyroute_relay::upstream::forward::Upstreams;

/// Largest `/status?members=false` body read from a replica: far more than it needs.
const MAX_STATUS_BYTES: usize = 64 * 1024;

/// The longest the registry may take to be written and read (a hung shared volume): the
/// round goes on with the last list, and no second write starts while one hangs.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// A map loaded more than this after now is taken for a wrong clock, not the latest map.
const CLOCK_SLACK_MS: u64 = 5 * 60 * 1000;

type Heartbeat = tokio::task::JoinHandle<Result<Vec<Registered>, StoreError>>;

/// Where the replicas are listed.
pub enum Peers {
    /// The registry beside the overrides file, where this proxy's heartbeat is written
    /// every round; `pending` is the last round's write while it has not finished.
    File {
        store: Arc<FileStore>,
        me: Me,
        pending: Option<Heartbeat>,
    },
    /// The proxies' Service's endpoints, on this admin port.
    #[cfg(feature = "kubernetes")]
    Service {
        endpoints:
            tokio::sync::watch::Receiver<Option<Arc<crate::membership::endpoint_slices::View>>>,
        admin_port: u16,
    },
}

impl Peers {
    pub fn file(store: Arc<FileStore>, me: Me) -> Self {
        Peers::File {
            store,
            me,
            pending: None,
        }
    }

    /// The replicas as listed now (after this proxy's heartbeat, in file mode).
    async fn list(&mut self) -> Result<Vec<Registered>, String> {
        match self {
            Peers::File { store, me, pending } => {
                let mut write = match pending.take() {
                    Some(write) => write,
                    None => {
                        let (store, me) = (store.clone(), me.clone());
                        tokio::task::spawn_blocking(move || registry::heartbeat(&store, &me))
                    }
                };
                match tokio::time::timeout(LIST_TIMEOUT, &mut write).await {
                    Ok(written) => written
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string()),
                    Err(_) => {
                        *pending = Some(write);
                        Err(format!(
                            "{} did not answer within {LIST_TIMEOUT:?}",
                            registry::path_of(store).display()
                        ))
                    }
                }
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
}

pub async fn poll(replicas: Arc<Replicas>, mut peers: Peers, upstreams: Upstreams) {
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let last = replicas.round();
        let (error, listed) = match peers.list().await {
            Ok(listed) => (None, listed),
            // The last list stays shown with the error beside it.
            Err(error) => (
                Some(error),
                last.replicas
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
        let unreachable_since: HashMap<&str, Option<u64>> = last
            .replicas
            .iter()
            .map(|r| (r.admin.as_str(), r.unreachable_since_ms))
            .collect();
        let reads = listed.into_iter().map(|peer| {
            let upstreams = &upstreams;
            let instance = replicas.instance();
            async move {
                let report = tokio::time::timeout(STATUS_TIMEOUT, read(upstreams, peer.admin))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failed::Unreachable(format!(
                            "{}/status did not answer within {STATUS_TIMEOUT:?}",
                            peer.admin
                        )))
                    });
                replica(peer, report, instance)
            }
        });
        let mut read = futures_util::future::join_all(reads).await;
        let now = wall_ms();
        for replica in &mut read {
            if replica.error.is_some() && !replica.answered {
                let since = unreachable_since
                    .get(replica.admin.as_str())
                    .copied()
                    .flatten();
                replica.unreachable_since_ms = Some(since.unwrap_or(now));
            }
        }
        replicas.publish(Round {
            error,
            replicas: read,
        });
    }
}

/// What is read of a replica's `/status`: only what the Replicas section shows.
/// `instance` and `overrides` are absent from proxies older than the list of replicas:
/// such a replica is listed, its overrides not compared.
#[derive(Deserialize)]
struct PeerStatus {
    version: String,
    #[serde(default)]
    instance: String,
    map: PeerMap,
    #[serde(default)]
    overrides: Option<PeerOverrides>,
    draining: bool,
}

#[derive(Deserialize)]
struct PeerMap {
    hash: Option<String>,
    loaded_at: Option<String>,
}

#[derive(Deserialize)]
struct PeerOverrides {
    store: String,
    version: u64,
}

/// What a good `/status` gives.
#[derive(Debug, PartialEq, Eq)]
struct Reported {
    version: String,
    instance: String,
    map_hash: Option<String>,
    map_loaded_at_ms: Option<u64>,
    /// The overrides version, and whether the overrides come from a shared store.
    overrides: Option<(u64, bool)>,
    draining: bool,
}

/// Why a replica's `/status` gave nothing: it did not answer, or what it answered could
/// not be taken.
#[derive(Debug, PartialEq, Eq)]
enum Failed {
    Unreachable(String),
    Refused(String),
}

async fn read(upstreams: &Upstreams, admin: SocketAddr) -> Result<Reported, Failed> {
    let authority =
        Authority::try_from(admin.to_string()).map_err(|e| Failed::Unreachable(e.to_string()))?;
    let response = upstreams
        .get(&authority, "/status?members=false", STATUS_TIMEOUT)
        .await
        .map_err(|e| Failed::Unreachable(e.to_string()))?;
    if !response.status().is_success() {
        return Err(Failed::Refused(format!(
            "{admin}/status answered {}",
            response.status()
        )));
    }
    let body = Limited::new(response.into_body(), MAX_STATUS_BYTES)
        .collect()
        .await
        .map_err(|e| Failed::Refused(format!("reading {admin}/status: {e}")))?
        .to_bytes();
    parse(admin, &body, wall_ms()).map_err(Failed::Refused)
}

/// Parses and checks a replica's `/status`; `now_ms` is the wall clock, which no map's
/// load time may be far after.
fn parse(admin: SocketAddr, body: &[u8], now_ms: u64) -> Result<Reported, String> {
    let refused = |why: &str| format!("{admin}/status is refused: {}", shorten(why));
    let status: PeerStatus = serde_json::from_slice(body).map_err(|e| refused(&e.to_string()))?;
    let short = |text: &str| text.chars().count() <= 64;
    if !short(&status.version)
        || !short(&status.instance)
        || status.overrides.as_ref().is_some_and(|o| !short(&o.store))
    {
        return Err(refused(
            "a version, instance or store longer than 64 characters",
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
                .filter(|at| *at <= now_ms.saturating_add(CLOCK_SLACK_MS))
                .ok_or_else(|| refused("its map's loaded_at is not an RFC 3339 time before now"))?,
        ),
    };
    Ok(Reported {
        version: status.version,
        instance: status.instance,
        map_hash: status.map.hash,
        map_loaded_at_ms,
        overrides: status.overrides.map(|o| (o.version, o.store != "process")),
        draining: status.draining,
    })
}

fn replica(peer: Registered, report: Result<Reported, Failed>, instance: &str) -> Replica {
    let unread = |error: String, answered: bool| Replica {
        name: peer.name.clone(),
        admin: peer.admin.to_string(),
        this: false,
        version: None,
        map_hash: None,
        map_loaded_at_ms: None,
        overrides_version: None,
        overrides_shared: None,
        draining: None,
        answered,
        error: Some(error),
        checked_at_ms: wall_ms(),
        unreachable_since_ms: None,
    };
    match report {
        Ok(reported) => Replica {
            name: peer.name.clone(),
            admin: peer.admin.to_string(),
            this: !reported.instance.is_empty() && reported.instance == instance,
            version: Some(reported.version),
            map_hash: reported.map_hash,
            map_loaded_at_ms: reported.map_loaded_at_ms,
            overrides_version: reported.overrides.map(|o| o.0),
            overrides_shared: reported.overrides.map(|o| o.1),
            draining: Some(reported.draining),
            answered: true,
            error: None,
            checked_at_ms: wall_ms(),
            unreachable_since_ms: None,
        },
        Err(Failed::Unreachable(error)) => unread(error, false),
        Err(Failed::Refused(error)) => unread(error, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-04T21:00:00Z.
    const NOW: u64 = 1_796_418_000_000;

    fn parse_of(body: &str) -> Result<Reported, String> {
        parse(
            SocketAddr::from(([127, 0, 0, 2], 9900)),
            body.as_bytes(),
            NOW,
        )
    }

    fn peer(name: &str) -> Registered {
        Registered {
            name: name.to_owned(),
            admin: SocketAddr::from(([127, 0, 0, 2], 9900)),
        }
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
        assert_eq!(reported.map_loaded_at_ms, Some(NOW + 250));
        assert_eq!(reported.overrides, Some((9, true)));
        assert_eq!(reported.instance, "1f2e");
        let this = replica(peer("a"), Ok(reported), "1f2e");
        assert!(this.this);
        assert_eq!(this.overrides_shared, Some(true));
    }

    #[test]
    fn an_older_proxys_status_is_read_without_its_overrides() {
        let reported =
            parse_of(r#"{"version":"0.0.9","draining":false,"members":[],"map":{"hash":null}}"#)
                .unwrap();
        assert_eq!((reported.instance.as_str(), reported.overrides), ("", None));
        let listed = replica(peer("old"), Ok(reported), "");
        assert!(!listed.this, "an empty instance is nobody's");
        assert_eq!(listed.overrides_shared, None);
    }

    #[test]
    fn what_a_replica_answered_is_not_taken_for_unreachable() {
        let refused = replica(peer("a"), Err(Failed::Refused("bad".to_owned())), "x");
        assert!(refused.answered);
        let gone = replica(
            peer("a"),
            Err(Failed::Unreachable("refused".to_owned())),
            "x",
        );
        assert!(!gone.answered);
    }

    #[test]
    fn a_bad_status_is_refused_with_its_reason_kept_short() {
        let overrides = r#""overrides":{"store":"file","version":1}"#;
        let good_map = format!(r#""map":{{"hash":"{}"}}"#, "a".repeat(64));
        for (body, reason) in [
            ("not json".to_owned(), "expected"),
            (
                format!(
                    r#"{{"version":"1","instance":"i","draining":false,{overrides},"map":{{"hash":"{}"}}}}"#,
                    "A".repeat(64)
                ),
                "64 lower-case hex",
            ),
            (
                format!(
                    r#"{{"version":"{}","instance":"i","draining":false,{overrides},{good_map}}}"#,
                    "é".repeat(100_000)
                ),
                "longer than 64",
            ),
            (
                format!(
                    r#"{{"version":"1","instance":"i","draining":false,{overrides},"map":{{"hash":null,"loaded_at":"yesterday"}}}}"#
                ),
                "RFC 3339",
            ),
            (
                r#"{"version":"1","instance":"i","draining":false,"map":{"hash":null,"loaded_at":"9999-01-01T00:00:00Z"}}"#.to_owned(),
                "before now",
            ),
        ] {
            let error = parse_of(&body).unwrap_err();
            assert!(
                error.starts_with("127.0.0.2:9900/status is refused: "),
                "{error}"
            );
            assert!(error.contains(reason), "{error}");
            assert!(error.chars().count() < 400, "{}", error.chars().count());
        }
    }
}
