//! Each member's request rate, as the balancer-manager shows it (HAProxy's "cur" session
//! rate): once a second, off the request path, the requests counted since the last tick.

use crate::balancer::Balancer;
use std::sync::Arc;
use std::time::Duration;

/// Samples every member's rate once a second, for the life of the process.
pub async fn sample(balancer: Arc<Balancer>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(table) = balancer.table() {
            for member in table.members() {
                member.state.sample_rate();
            }
        }
    }
}
