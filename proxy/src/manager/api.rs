//! The balancer-manager's data: what it shows, and the changes it makes.

use crate::admin::{BalancerInfo, MemberInfo};
use crate::manager::access::Who;
use crate::member::{AgentReport, Member};
use crate::overrides::Edit;
use crate::table::MemberTable;
use routemap::{LoadFactor, MapStatus, Status};
use serde::Serialize;
use std::collections::HashMap;
use stickyroute_relay::clock::now_ms;
use stickyroute_relay::urlencoded;

/// Everything the page and `GET /balancer-manager/api/` show.
#[derive(Serialize)]
pub struct View {
    pub balancer: BalancerInfo,
    pub map: MapStatus,
    pub members: Vec<ManagedMember>,
    /// Required in every change (POST); the page embeds it in its forms.
    pub nonce: String,
    /// Whether agents' map hashes are read (`--agent-admin-port`).
    pub agents_polled: bool,
    /// Where the overrides are kept.
    pub overrides: OverridesInfo,
    /// The replicas sharing them and whether each applied the latest map and overrides;
    /// `None` when this proxy cannot know them.
    pub replicas: Option<crate::replicas::ReplicasView>,
}

/// Where the overrides are kept and which version of them is applied here.
#[derive(Serialize)]
pub struct OverridesInfo {
    /// `"process"` (this proxy only, gone on restart), `"file"` or `"configmap"`.
    pub store: &'static str,
    /// The version of the set applied here.
    pub version: u64,
    /// Where the store is and its last read error, when there is one.
    #[serde(flatten)]
    pub status: Option<crate::overrides::store::StoreStatus>,
}

#[derive(Serialize)]
pub struct ManagedMember {
    #[serde(flatten)]
    pub info: MemberInfo,
    /// Runtime overrides on top of the map, if any.
    pub status_override: Option<Status>,
    pub loadfactor_override: Option<u8>,
    /// Who set the overrides, and when (wall-clock milliseconds since the epoch).
    pub override_by: Option<String>,
    pub override_at_ms: Option<u64>,
    /// The member's agent's report, and whether its map is the proxy's.
    pub agent: Option<AgentReport>,
    pub agent_map_matches: Option<bool>,
}

impl ManagedMember {
    pub fn of(member: &Member, proxy_hash: Option<&str>) -> Self {
        let agent = member.state.agent.load_full().map(|r| (*r).clone());
        let agent_map_matches = agent
            .as_ref()
            .and_then(|a| a.map_hash.as_deref())
            .zip(proxy_hash)
            .map(|(theirs, ours)| theirs == ours);
        let origin = member.state.override_origin.load_full();
        Self {
            info: MemberInfo::of(member, now_ms()),
            override_by: origin.as_ref().map(|o| o.by.clone()),
            override_at_ms: origin.as_ref().map(|o| o.at_ms),
            status_override: member.state.status_override(),
            loadfactor_override: member.state.loadfactor_override().map(LoadFactor::get),
            agent,
            agent_map_matches,
        }
    }
}

/// A requested change, from a JSON body or an HTML form.
#[derive(Debug, Default)]
pub struct Change {
    pub nonce: Option<String>,
    pub status: Option<String>,
    pub loadfactor: Option<String>,
    pub reset: bool,
    /// Take the member out of error now (Apache's "force recovery"); this proxy's health
    /// state only, not an override.
    pub clear_error: bool,
}

impl Change {
    /// From `{"nonce": "...", "status": "drain", "loadfactor": 30, "reset": false}`;
    /// unknown keys are errors.
    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let object = value.as_object().ok_or("the body must be a JSON object")?;
        let mut change = Change::default();
        for (key, value) in object {
            let text = match value {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                serde_json::Value::Null => None,
                _ => return Err(format!("{key:?} must be a string or a number")),
            };
            match key.as_str() {
                "nonce" => change.nonce = text,
                "status" => change.status = text,
                "loadfactor" => change.loadfactor = text,
                "reset" => change.reset = text.as_deref() == Some("true"),
                "clear_error" => change.clear_error = text.as_deref() == Some("true"),
                other => {
                    return Err(format!(
                        "unknown field {other:?} (known: nonce, status, loadfactor, reset, clear_error)"
                    ));
                }
            }
        }
        Ok(change)
    }

    /// From an `application/x-www-form-urlencoded` body; empty fields mean "no change".
    pub fn from_form(body: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(body).map_err(|_| "the form is not UTF-8".to_owned())?;
        let fields: HashMap<String, String> = urlencoded::pairs(text).collect();
        let field = |name: &str| fields.get(name).filter(|v| !v.is_empty()).cloned();
        Ok(Change {
            nonce: field("nonce"),
            status: field("status"),
            loadfactor: field("loadfactor"),
            reset: field("reset").is_some(),
            clear_error: field("clear_error").is_some(),
        })
    }
}

/// The edit `change` asks of the member with `route`, validated whole, so that bad input
/// changes nothing; `None` when it asks only to clear the member's error.
pub fn plan(
    table: &MemberTable,
    route: &str,
    change: &Change,
    who: &Who,
) -> Result<Option<Edit>, String> {
    let member = table
        .by_route(route)
        .ok_or_else(|| format!("no member has route {route:?}"))?;
    let status = change
        .status
        .as_deref()
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                format!("status {s:?} is not one of enabled, disabled, drain, standby")
            })
        })
        .transpose()?;
    let loadfactor = change
        .loadfactor
        .as_deref()
        .map(|l| {
            l.trim()
                .parse::<u32>()
                .ok()
                .and_then(LoadFactor::new)
                .ok_or_else(|| format!("loadfactor {l:?} is not a whole number from 1 to 100"))
        })
        .transpose()?;
    if !change.reset && status.is_none() && loadfactor.is_none() {
        if change.clear_error {
            return Ok(None);
        }
        return Err("nothing to change: give status, loadfactor, reset or clear_error".to_owned());
    }
    Ok(Some(Edit {
        route: member.route.as_str().to_owned(),
        key: member.key.to_string(),
        status,
        loadfactor,
        reset: change.reset,
        by: who.to_string(),
        at_ms: crate::member::wall_ms(),
    }))
}

/// Clears the member's error (see [`Change::clear_error`]), with its audit line.
pub fn clear_error(who: &Who, member: &Member) {
    let before = if member.is_healthy(now_ms()) {
        "ok"
    } else {
        "in error"
    };
    member.state.clear_error();
    audit(who, member, "clear error", before, "ok");
}

/// What a member is set to before an edit, for its audit lines.
pub struct Before {
    status: Status,
    loadfactor: u8,
    described: String,
}

impl Before {
    pub fn of(member: &Member) -> Self {
        Self {
            status: member.configured_status(),
            loadfactor: member.loadfactor(),
            described: describe(member),
        }
    }
}

/// Logs a made edit as audit lines, one per thing changed.
pub fn audit_edit(who: &Who, member: &Member, edit: &Edit, before: &Before) {
    if edit.reset {
        audit(
            who,
            member,
            "reset to map",
            &before.described,
            &format!(
                "status {} loadfactor {}",
                member.map_status, member.map_loadfactor
            ),
        );
    }
    if let Some(status) = edit.status {
        audit(
            who,
            member,
            "status",
            before.status.as_str(),
            status.as_str(),
        );
    }
    if let Some(loadfactor) = edit.loadfactor {
        audit(
            who,
            member,
            "loadfactor",
            &before.loadfactor.to_string(),
            &loadfactor.to_string(),
        );
    }
}

fn describe(member: &Member) -> String {
    format!(
        "status {} loadfactor {}",
        member.status(),
        member.loadfactor()
    )
}

fn audit(who: &Who, member: &Member, what: &str, before: &str, after: &str) {
    tracing::info!(
        target: "stickyroute::audit",
        who = %who,
        member = %member.route,
        key = %member.key,
        what,
        before,
        after,
        "balancer-manager change"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_come_from_json_or_forms() {
        let json =
            Change::from_json(br#"{"nonce": "n", "status": "drain", "loadfactor": 30}"#).unwrap();
        assert_eq!(
            (
                json.nonce.as_deref(),
                json.status.as_deref(),
                json.loadfactor.as_deref()
            ),
            (Some("n"), Some("drain"), Some("30"))
        );
        assert!(
            Change::from_json(br#"{"nonce": "n", "weight": 3}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(Change::from_json(b"nope").is_err());
        let form = Change::from_form(b"nonce=ab%20c&status=disabled&loadfactor=&reset=").unwrap();
        assert_eq!(form.nonce.as_deref(), Some("ab c"));
        assert_eq!(form.status.as_deref(), Some("disabled"));
        assert_eq!(form.loadfactor, None);
        assert!(!form.reset);
        assert!(Change::from_form(b"nonce=x&reset=1").unwrap().reset);
    }
}
