//! Map convergence: the proxy reads every member's agent `/status` (on the member's address
//! and `--agent-admin-port`) so the balancer-manager can show which map hash each agent runs
//! and mark the ones that differ from the proxy's, and whether each agent drains (which puts
//! its member in drain, as its answers do).
//!
//! Each read has a deadline for the whole answer, head and body: an agent that accepts and
//! then stalls gets an error report, and the next round starts on time for every other
//! agent. What an agent reports is read as the [`AgentStatus`] both binaries share, which
//! checks it as it is read (a hash is 64 lower-case hex digits), before anything is shown.

use crate::balancer::Balancer;
use crate::member::{AgentReport, wall_ms};
use http::uri::Authority;
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;
use std::time::Duration;
use stickyroute_relay::agent_status::AgentStatus;
use stickyroute_relay::upstream::forward::Upstreams;

/// Largest `/status` body read from an agent.
const MAX_STATUS_BYTES: usize = 256 * 1024;

/// The longest one agent's `/status` may take, whole.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest reason kept for a refused report, in characters: the parser's messages can quote
/// what the agent sent, which is up to [`MAX_STATUS_BYTES`] of anything.
const MAX_ERROR_CHARS: usize = 300;

pub async fn poll(balancer: Arc<Balancer>, upstreams: Upstreams, port: u16, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(table) = balancer.table() else {
            continue;
        };
        let reads = table.members().iter().filter_map(|member| {
            let address = member.address?;
            let authority =
                Authority::try_from(format!("{}", std::net::SocketAddr::new(address.ip(), port)))
                    .ok()?;
            let upstreams = &upstreams;
            // Within the interval too, so that a round never runs into the next one.
            let deadline = STATUS_TIMEOUT.min(interval);
            Some(async move {
                let report = tokio::time::timeout(deadline, read_status(upstreams, &authority))
                    .await
                    .unwrap_or_else(|_| {
                        failed(format!(
                            "{authority}/status did not answer within {deadline:?}"
                        ))
                    });
                if let Some(draining) = report.draining {
                    member.agent_says_draining(draining);
                }
                member.state.agent.store(Some(Arc::new(report)));
            })
        });
        futures_util::future::join_all(reads).await;
    }
}

fn failed(error: String) -> AgentReport {
    AgentReport {
        map_hash: None,
        map_generation: None,
        draining: None,
        error: Some(error),
        at_ms: wall_ms(),
    }
}

async fn read_status(upstreams: &Upstreams, agent: &Authority) -> AgentReport {
    let response = match upstreams.get(agent, "/status", STATUS_TIMEOUT).await {
        Ok(response) => response,
        Err(error) => return failed(error.to_string()),
    };
    if !response.status().is_success() {
        return failed(format!("{agent}/status answered {}", response.status()));
    }
    let body = match Limited::new(response.into_body(), MAX_STATUS_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => return failed(format!("reading {agent}/status: {error}")),
    };
    report(agent, &body)
}

/// What the proxy keeps of an agent's `/status` body.
fn report(agent: &Authority, body: &[u8]) -> AgentReport {
    let status = match serde_json::from_slice::<AgentStatus>(body) {
        Ok(status) => status,
        Err(error) => {
            let reason = shorten(&error.to_string());
            return failed(format!("{agent}/status is refused: {reason}"));
        }
    };
    match status.map.hash {
        None => failed("the agent has no map loaded".to_owned()),
        Some(hash) => AgentReport {
            map_hash: Some(hash.into_string()),
            map_generation: Some(status.map.generation),
            draining: Some(status.draining),
            error: None,
            at_ms: wall_ms(),
        },
    }
}

/// At most [`MAX_ERROR_CHARS`] of `text`, counted in characters: its start, and its end
/// (which says what was expected, and where).
pub(crate) fn shorten(text: &str) -> String {
    let chars = text.chars().count();
    if chars <= MAX_ERROR_CHARS {
        return text.to_owned();
    }
    let half = MAX_ERROR_CHARS / 2;
    let head: String = text.chars().take(half).collect();
    let tail: String = text.chars().skip(chars - half).collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_of(body: &str) -> AgentReport {
        report(&Authority::from_static("127.0.0.2:9901"), body.as_bytes())
    }

    #[test]
    fn the_map_is_taken_from_a_good_report_only() {
        let hash = "a1".repeat(32);
        let good = report_of(&format!(
            r#"{{"version":"9.9.9","map":{{"hash":"{hash}","generation":7,"new":1}}}}"#
        ));
        assert_eq!(good.map_hash.as_deref(), Some(hash.as_str()));
        assert_eq!(good.map_generation, Some(7));
        assert_eq!(good.error, None);

        let unloaded = report_of(r#"{"map":{"hash":null,"generation":0}}"#);
        assert_eq!(unloaded.map_hash, None);
        assert_eq!(
            unloaded.error.as_deref(),
            Some("the agent has no map loaded")
        );

        for bad in [
            format!(
                r#"{{"map":{{"hash":"{}","generation":1}}}}"#,
                "é".repeat(32)
            ),
            format!(
                r#"{{"map":{{"hash":"{}","generation":1}}}}"#,
                "A1".repeat(32)
            ),
            r#"{"map":{"hash":"abc","generation":1}}"#.to_owned(),
            "not json".to_owned(),
        ] {
            let refused = report_of(&bad);
            assert_eq!(refused.map_hash, None, "{bad}");
            let error = refused.error.unwrap_or_default();
            assert!(
                error.starts_with("127.0.0.2:9901/status is refused: "),
                "{error}"
            );
        }
    }

    #[test]
    fn a_refused_report_is_not_repeated_back_at_length() {
        let long = "é".repeat(100_000);
        let refused = report_of(&format!(
            r#"{{"map":{{"hash":"{}","generation":"{long}"}}}}"#,
            "a".repeat(64)
        ));
        let error = refused.error.unwrap_or_default();
        assert!(error.contains("expected u64"), "{error}");
        assert!(
            error.chars().count() < MAX_ERROR_CHARS + 50,
            "{} characters",
            error.chars().count()
        );
    }
}
