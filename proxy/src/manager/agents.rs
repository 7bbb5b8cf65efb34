//! Map convergence: the proxy reads every member's agent `/status` (on the member's address
//! and `--agent-admin-port`) so the balancer-manager can show which map hash each agent runs
//! and mark the ones that differ from the proxy's.
//!
//! Each read has a deadline for the whole answer, head and body: an agent that accepts and
//! then stalls gets an error report, and the next round starts on time for every other
//! agent. What an agent reports is checked before it is shown (a hash is 64 hex digits).

use crate::balancer::Balancer;
use crate::member::{AgentReport, wall_ms};
use http::uri::Authority;
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;
use std::time::Duration;
use stickyroute_relay::forward::Upstreams;

/// Largest `/status` body read from an agent.
const MAX_STATUS_BYTES: usize = 256 * 1024;

/// The longest one agent's `/status` may take, whole.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

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
    let status = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(status) => status,
        Err(error) => return failed(format!("{agent}/status is not JSON: {error}")),
    };
    match &status["map"]["hash"] {
        serde_json::Value::Null => failed("the agent has no map loaded".to_owned()),
        serde_json::Value::String(hash) if is_map_hash(hash) => AgentReport {
            map_hash: Some(hash.clone()),
            map_generation: status["map"]["generation"].as_u64(),
            error: None,
            at_ms: wall_ms(),
        },
        _ => failed(format!(
            "{agent}/status reports a map hash that is not 64 hex digits"
        )),
    }
}

/// A route map hash as every component shows it: SHA-256 in lower-case hex.
fn is_map_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_real_hashes_are_taken() {
        assert!(super::is_map_hash(&"a1".repeat(32)));
        assert!(!super::is_map_hash(&"é".repeat(32)));
        assert!(!super::is_map_hash("abc"));
        assert!(!super::is_map_hash(&"A1".repeat(32)));
    }
}
