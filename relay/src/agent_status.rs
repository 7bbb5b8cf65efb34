//! The agent's admin `GET /status` document: the wire contract between the two binaries.
//!
//! `stickyroute-agent` serializes an [`AgentStatus`] and `stickyroute-proxy` deserializes
//! one (the balancer-manager shows each member's agent map, see `--agent-admin-port`). Both
//! sides use this one type so that they cannot drift apart: a field renamed or retyped on one
//! side only would leave the proxy reading nothing, or the wrong thing, from every agent. The
//! tests below pin the field names the agent has always published and round-trip a report,
//! so a rename shows up as a failing test rather than as every agent reported broken.
//!
//! What the proxy relies on is the map: its [`MapHash`] and generation. Those are checked as
//! the document is read (a hash is 64 lower-case hex digits), so a report from a broken or
//! hostile agent is refused with the reason instead of being shown. Everything else is for
//! operators; it is typed as well, but defaults when absent, so a minimal or older agent's
//! report still gives its map. Fields this build does not know are ignored (so never
//! `deny_unknown_fields`): a newer agent may add some. A value it does not know in a typed
//! field, such as a new [`MatchedBy`], refuses the report, so extend the types here first.

use routemap::MapStatus;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

/// An agent's `/status`: what an operator, or the proxy's balancer-manager, wants to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The agent's package version.
    #[serde(default)]
    pub version: String,
    /// Where the agent forwards to.
    #[serde(default)]
    pub upstream: String,
    #[serde(default)]
    pub keys: Keys,
    /// This instance's route(s) in the map in use, one per address key.
    #[serde(default)]
    pub routes: Vec<OwnRoute>,
    /// The route cookies are issued with when keys miss the map.
    #[serde(default)]
    pub default_route: Option<String>,
    /// The map the agent serves: the part of the report the proxy reads.
    pub map: MapReport,
    #[serde(default)]
    pub draining: bool,
    /// The agent's drain: when it began and how far it is.
    #[serde(default)]
    pub drain: DrainReport,
    /// Whether the agent can reach its app, as the last exchange found it.
    #[serde(default)]
    pub app: AppReport,
}

/// The header an agent puts on its answers to tell the proxy in front about its member
/// (the proxy removes it, so clients never see it; the agent removes it from what its app
/// sends, so only the agent can raise it). Its values are [`UNREACHABLE`] and [`DRAINING`].
pub const MEMBER_STATE_HEADER: &str = "stickyroute-member";
/// [`MEMBER_STATE_HEADER`]: the agent could not reach its app (the connection was refused
/// or timed out, so the request was never delivered). The proxy takes the answer as a
/// failed connection to that member and retries the request elsewhere when it may.
pub const UNREACHABLE: &str = "unreachable";
/// [`MEMBER_STATE_HEADER`]: the agent is draining (SIGTERM, or `POST /drain`). The proxy
/// keeps sending the member its sessions and sends new sessions elsewhere.
pub const DRAINING: &str = "draining";

/// An agent's drain, for `/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    /// Since when the agent has been draining; `None` while it is not.
    #[serde(default, with = "rfc3339::option")]
    pub since: Option<SystemTime>,
    /// What started it: `SIGTERM`, `POST /drain`, ...
    #[serde(default)]
    pub reason: Option<String>,
    /// Milliseconds since the last request of a session arrived (or since the drain began).
    #[serde(default)]
    pub idle_ms: u64,
    /// The drain is over: idle for `--drain-idle`, or `--drain-timeout` passed.
    #[serde(default)]
    pub done: bool,
}

/// The app behind an agent, as its traffic finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppReport {
    /// False from a connection the app refused (or that timed out) until one succeeds.
    pub reachable: bool,
    /// Since when it has been unreachable.
    #[serde(default, with = "rfc3339::option")]
    pub unreachable_since: Option<SystemTime>,
    /// Requests the app could not be reached for, since start.
    #[serde(default)]
    pub unreachable_total: u64,
    /// `--app-health-path` fails: the agent forwards nothing and is unready.
    #[serde(default)]
    pub check_failing: bool,
}

impl Default for AppReport {
    /// An older agent says nothing about its app: it is taken as reachable.
    fn default() -> Self {
        AppReport {
            reachable: true,
            unreachable_since: None,
            unreachable_total: 0,
            check_failing: false,
        }
    }
}

/// The keys the agent looks its own map entry up by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keys {
    /// `--server-addr`, else the local addresses connections arrived on so far.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub name: Option<String>,
}

/// The agent's own route for one address key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnRoute {
    pub address: IpAddr,
    /// `None` when neither key is in the map.
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub matched_by: Option<MatchedBy>,
}

/// How the agent's entry was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchedBy {
    Address,
    Name,
}

/// The agent's live map, as [`MapStatus`] shows it (the same fields and text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapReport {
    /// Where maps come from, e.g. `/etc/routemap/routemap` or `configmap:ns/name#key`.
    #[serde(default)]
    pub source: String,
    /// Hash of the served map; `None` until the first map is loaded.
    #[serde(default)]
    pub hash: Option<MapHash>,
    /// 0 until the first map is loaded, then +1 for each published change.
    pub generation: u64,
    #[serde(default)]
    pub entries: usize,
    #[serde(default, with = "rfc3339::option")]
    pub loaded_at: Option<SystemTime>,
    /// The most recent failed load, cleared when a load succeeds.
    #[serde(default)]
    pub last_error: Option<MapError>,
    /// Failed load attempts since start.
    #[serde(default)]
    pub reload_errors: u64,
}

/// A failed load, as [`routemap::LastError`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapError {
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    pub message: String,
    /// `ORIGIN:LINE: message` per parse error.
    #[serde(default)]
    pub details: Vec<String>,
}

impl From<&MapStatus> for MapReport {
    fn from(status: &MapStatus) -> Self {
        MapReport {
            source: status.source.clone(),
            hash: status.hash.as_deref().and_then(|hash| {
                // routemap computes it as SHA-256 in hex, so this does not fail; were it to,
                // the agent reports no hash rather than one the proxy would refuse.
                MapHash::parse(hash)
                    .map_err(|error| tracing::error!(%error, "the served map's hash"))
                    .ok()
            }),
            generation: status.generation,
            entries: status.entries,
            loaded_at: status.loaded_at,
            last_error: status.last_error.as_ref().map(|error| MapError {
                at: error.at,
                message: error.message.clone(),
                details: error.details.clone(),
            }),
            reload_errors: status.reload_errors,
        }
    }
}

/// A route map hash as every component shows it: SHA-256 in lower-case hex, 64 digits.
/// Only [`MapHash::parse`] (which deserializing goes through) makes one, so a hash taken
/// from an agent's report is known to be exactly that, whatever the agent sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct MapHash(String);

/// Why a text is not a [`MapHash`]. The text itself is not repeated: it came from an agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMapHash {
    #[error("the map hash is not 64 lower-case hex digits: it has {chars} characters")]
    Length { chars: usize },
    #[error("the map hash is not 64 lower-case hex digits: character {position} is not one")]
    NotHex { position: usize },
}

impl MapHash {
    /// Digits in a hash.
    pub const LEN: usize = 64;

    /// Counted and checked in characters, never by byte index, so any text is safe here.
    pub fn parse(text: &str) -> Result<Self, BadMapHash> {
        let chars = text.chars().count();
        if chars != Self::LEN {
            return Err(BadMapHash::Length { chars });
        }
        if let Some(at) = text
            .chars()
            .position(|c| !matches!(c, '0'..='9' | 'a'..='f'))
        {
            return Err(BadMapHash::NotHex { position: at + 1 });
        }
        Ok(MapHash(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for MapHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MapHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        MapHash::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Times as [`MapStatus`] writes them: RFC 3339 in UTC with milliseconds.
mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*at))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::SystemTime;

        pub fn serialize<S: Serializer>(at: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => super::serialize(at, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            #[derive(Deserialize)]
            struct At(#[serde(with = "super")] SystemTime);
            Ok(Option::<At>::deserialize(d)?.map(|At(at)| at))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use routemap::LastError;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn map_status() -> MapStatus {
        MapStatus {
            source: "/etc/routemap/routemap".to_owned(),
            hash: Some(HASH.to_owned()),
            generation: 3,
            entries: 2,
            loaded_at: Some(at(1_700_000_000_123)),
            last_error: Some(LastError {
                at: at(1_700_000_001_456),
                message: "2 parse errors".to_owned(),
                details: vec!["routemap:1: no route".to_owned()],
            }),
            reload_errors: 1,
        }
    }

    fn report() -> AgentStatus {
        AgentStatus {
            version: "0.1.0".to_owned(),
            upstream: "127.0.0.1:8080".to_owned(),
            keys: Keys {
                addresses: vec!["127.0.0.2".parse().unwrap(), "::1".parse().unwrap()],
                name: Some("web-0".to_owned()),
            },
            routes: vec![
                OwnRoute {
                    address: "127.0.0.2".parse().unwrap(),
                    route: Some("www0".to_owned()),
                    matched_by: Some(MatchedBy::Name),
                },
                OwnRoute {
                    address: "::1".parse().unwrap(),
                    route: None,
                    matched_by: None,
                },
            ],
            default_route: None,
            map: MapReport::from(&map_status()),
            draining: true,
            drain: DrainReport {
                since: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_003_000)),
                reason: Some("SIGTERM".to_owned()),
                idle_ms: 1500,
                done: false,
            },
            app: AppReport {
                reachable: false,
                unreachable_since: Some(
                    SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_002_000),
                ),
                unreachable_total: 4,
                check_failing: true,
            },
        }
    }

    /// The document as agents have always published it: these names are what every proxy
    /// (and every operator's script) reads.
    fn wire() -> serde_json::Value {
        json!({
            "version": "0.1.0",
            "upstream": "127.0.0.1:8080",
            "keys": {"addresses": ["127.0.0.2", "::1"], "name": "web-0"},
            "routes": [
                {"address": "127.0.0.2", "route": "www0", "matched_by": "name"},
                {"address": "::1", "route": null, "matched_by": null},
            ],
            "default_route": null,
            "map": {
                "source": "/etc/routemap/routemap",
                "hash": HASH,
                "generation": 3,
                "entries": 2,
                "loaded_at": "2023-11-14T22:13:20.123Z",
                "last_error": {
                    "at": "2023-11-14T22:13:21.456Z",
                    "message": "2 parse errors",
                    "details": ["routemap:1: no route"],
                },
                "reload_errors": 1,
            },
            "draining": true,
            "drain": {"since": "2023-11-14T22:13:23.000Z", "reason": "SIGTERM", "idle_ms": 1500, "done": false},
            "app": {"reachable": false, "unreachable_since": "2023-11-14T22:13:22.000Z", "unreachable_total": 4, "check_failing": true},
        })
    }

    #[test]
    fn an_agents_report_round_trips_with_the_names_it_always_had() {
        let text = serde_json::to_string(&report()).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            wire()
        );
        assert_eq!(
            serde_json::from_str::<AgentStatus>(&text).unwrap(),
            report()
        );
    }

    #[test]
    fn the_map_is_written_as_the_map_status_is() {
        for status in [map_status(), routemap::Live::new("test").0.status()] {
            assert_eq!(
                serde_json::to_value(MapReport::from(&status)).unwrap(),
                serde_json::to_value(&status).unwrap()
            );
        }
    }

    #[test]
    fn a_newer_or_minimal_agents_report_still_gives_its_map() {
        let mut newer = wire();
        newer["pid"] = json!(1234);
        newer["map"]["signature"] = json!({"by": "ops"});
        newer["routes"][0]["weight"] = json!(3);
        let status: AgentStatus = serde_json::from_value(newer).unwrap();
        assert_eq!(status, report());
        let mut older = wire();
        older.as_object_mut().unwrap().remove("app");
        let status: AgentStatus = serde_json::from_value(older).unwrap();
        assert!(
            status.app.reachable,
            "an agent that does not say is taken as reachable"
        );

        let minimal: AgentStatus =
            serde_json::from_value(json!({"map": {"hash": HASH, "generation": 1}})).unwrap();
        assert_eq!(minimal.map.hash.as_ref().map(MapHash::as_str), Some(HASH));
        assert_eq!(minimal.map.generation, 1);

        let unloaded: AgentStatus =
            serde_json::from_value(json!({"map": {"hash": null, "generation": 0}})).unwrap();
        assert_eq!(unloaded.map.hash, None);
    }

    #[test]
    fn bad_hashes_are_refused_with_the_reason() {
        assert_eq!(MapHash::parse(HASH).unwrap().as_str(), HASH);
        let refused = [
            ("abc".to_owned(), BadMapHash::Length { chars: 3 }),
            (String::new(), BadMapHash::Length { chars: 0 }),
            (format!("{HASH}0"), BadMapHash::Length { chars: 65 }),
            // 64 bytes but 32 characters: lengths are not byte counts.
            ("é".repeat(32), BadMapHash::Length { chars: 32 }),
            ("é".repeat(64), BadMapHash::NotHex { position: 1 }),
            (
                format!("{}g", "0".repeat(63)),
                BadMapHash::NotHex { position: 64 },
            ),
            ("A1".repeat(32), BadMapHash::NotHex { position: 1 }),
            (
                format!(" {}", "0".repeat(63)),
                BadMapHash::NotHex { position: 1 },
            ),
        ];
        for (text, reason) in refused {
            assert_eq!(MapHash::parse(&text), Err(reason.clone()), "{text:?}");
            let mut document = wire();
            document["map"]["hash"] = json!(text);
            let error = serde_json::from_value::<AgentStatus>(document)
                .unwrap_err()
                .to_string();
            assert!(error.contains(&reason.to_string()), "{text:?}: {error}");
            assert!(error.contains("hash"), "{error}");
        }
        for hash in [json!(5), json!(["a"]), json!({"hash": HASH})] {
            let mut document = wire();
            document["map"]["hash"] = hash;
            assert!(serde_json::from_value::<AgentStatus>(document).is_err());
        }
    }

    #[test]
    fn a_report_without_a_map_generation_or_with_a_bad_time_is_refused() {
        assert!(serde_json::from_value::<AgentStatus>(json!({"version": "0.1.0"})).is_err());
        assert!(serde_json::from_value::<AgentStatus>(json!({"map": {"hash": HASH}})).is_err());
        let mut document = wire();
        document["map"]["generation"] = json!(-1);
        assert!(serde_json::from_value::<AgentStatus>(document).is_err());
        let mut document = wire();
        document["map"]["loaded_at"] = json!("yesterday");
        assert!(serde_json::from_value::<AgentStatus>(document).is_err());
    }
}
