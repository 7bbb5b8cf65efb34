//! Active health checks: `GET --health-path` on every member at an interval; `fall` failures
//! in a row take a member out, `rise` passes bring it back. Off unless configured. The
//! checks also keep up with whether each member's agent drains (it says so on every answer).

use crate::balancer::Balancer;
use crate::config::HealthCheck;
use std::sync::Arc;
use stickyroute_relay::agent_status;
use stickyroute_relay::upstream::forward::Upstreams;

pub async fn run(balancer: Arc<Balancer>, upstreams: Upstreams, check: HealthCheck) {
    let mut interval = tokio::time::interval(check.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(table) = balancer.table() else {
            continue;
        };
        let probes = table.members().iter().filter_map(|member| {
            let authority = member.authority.clone()?;
            let (upstreams, check) = (&upstreams, &check);
            Some(async move {
                let result = upstreams.get(&authority, &check.path, check.timeout).await.map(|r| {
                    // Through the member's agent, the check hears whether it drains.
                    let state = r.headers().get(agent_status::MEMBER_STATE_HEADER);
                    member.agent_says_draining(state.is_some_and(|v| v == agent_status::DRAINING));
                    r.status()
                });
                let passed = matches!(&result, Ok(status) if status.is_success() || status.is_redirection());
                if let Some(up) = member.state.record_check(passed, check.rise, check.fall) {
                    let detail = match &result {
                        Ok(status) => status.to_string(),
                        Err(error) => error.to_string(),
                    };
                    if up {
                        tracing::info!(route = %member.route, %authority, "member passed its health checks again");
                    } else {
                        tracing::warn!(route = %member.route, %authority, last = %detail, "member failed its health checks; taken out");
                    }
                }
            })
        });
        futures_util::future::join_all(probes).await;
    }
}
