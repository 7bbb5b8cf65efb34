//! Map convergence: the proxy reads every member's agent `/status` (on the member's address
//! and `--agent-admin-port`) so the balancer-manager can show which map hash each agent runs
//! and mark the ones that differ from the proxy's.

use crate::balancer::Balancer;
use crate::member::{AgentReport, wall_ms};
use http::uri::Authority;
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;
use std::time::Duration;
use stickyroute_relay::forward::Upstreams;

/// Largest `/status` body read from an agent.
const MAX_STATUS_BYTES: usize = 256 * 1024;

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
            Some(async move {
                let report = read_status(upstreams, &authority).await;
                member.state.agent.store(Some(Arc::new(report)));
            })
        });
        futures_util::future::join_all(reads).await;
    }
}

async fn read_status(upstreams: &Upstreams, agent: &Authority) -> AgentReport {
    let failed = |error: String| AgentReport {
        map_hash: None,
        map_generation: None,
        error: Some(error),
        at_ms: wall_ms(),
    };
    let response = match upstreams
        .get(agent, "/status", Duration::from_secs(2))
        .await
    {
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
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(status) => AgentReport {
            map_hash: status["map"]["hash"].as_str().map(str::to_owned),
            map_generation: status["map"]["generation"].as_u64(),
            error: status["map"]["hash"]
                .is_null()
                .then(|| "the agent has no map loaded".to_owned()),
            at_ms: wall_ms(),
        },
        Err(error) => failed(format!("{agent}/status is not JSON: {error}")),
    }
}
