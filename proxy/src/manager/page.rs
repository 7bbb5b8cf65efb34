//! The balancer-manager page: server-rendered HTML that works without JavaScript. Every
//! value is escaped; every form posts the per-process nonce.

use crate::manager::api::{ManagedMember, View};
use routemap::Status;
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

pub use stickyroute_relay::html::escape as esc;

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.bad{color:#b00020;font-weight:bold}.ok{color:#1b5e20}.override{background:#fff3cd}\
form{display:inline;margin:0}td.health{white-space:nowrap}code{font-size:.9em}.err{white-space:pre-wrap;color:#b00020}";

pub fn render(view: &View, flash: Option<&str>) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>stickyroute balancer-manager</title>\
         <style>{STYLE}</style></head><body><h1>stickyroute balancer-manager</h1>"
    );
    if let Some(flash) = flash {
        let _ = write!(h, "<p id=\"flash\" class=\"ok\">{}</p>", esc(flash));
    }
    let b = &view.balancer;
    let _ = write!(
        h,
        "<h2>Balancer</h2><table id=\"balancer\"><tr><th>stickysession</th><td>{}</td><th>nofailover</th><td>{}</td>\
         <th>lbmethod</th><td>{}</td><th>retry</th><td>{} s</td><th>table swaps</th><td>{}</td></tr></table>",
        esc(&b.stickysession),
        if b.nofailover { "On" } else { "Off" },
        b.lbmethod.as_str(),
        b.retry_seconds,
        b.table_swaps
    );
    let o = &view.overrides;
    let kept = match &o.status {
        Some(store) => format!(
            "in <code>{}</code>, shared by every proxy given it",
            esc(&store.location)
        ),
        None => "in this proxy only (lost on restart; other replicas do not see them)".to_owned(),
    };
    let _ = write!(
        h,
        "<h2>Overrides</h2><table id=\"overrides\"><tr><th>kept</th><td>{kept}</td></tr>\
         <tr><th>version applied</th><td id=\"overrides-version\">{}</td></tr>",
        o.version
    );
    if let Some((error, at)) = o
        .status
        .as_ref()
        .and_then(|f| f.last_error.as_deref().zip(f.last_error_at_ms))
    {
        let _ = write!(
            h,
            "<tr><th>last error</th><td class=\"err\">{} (at {}); the last good overrides stay applied</td></tr>",
            esc(error),
            time(at)
        );
    }
    h.push_str("</table>");
    let m = &view.map;
    let hash = m.hash.as_deref().unwrap_or("none loaded");
    let _ = write!(
        h,
        "<h2>Route map</h2><table id=\"map\"><tr><th>source</th><td><code>{}</code></td></tr>\
         <tr><th>hash</th><td><code id=\"map-hash\">{}</code></td></tr><tr><th>generation</th><td>{}</td></tr>\
         <tr><th>loaded at</th><td>{}</td></tr><tr><th>entries</th><td>{}</td></tr>",
        esc(&m.source),
        esc(hash),
        m.generation,
        m.loaded_at.map_or_else(
            || "-".to_owned(),
            |t| humantime::format_rfc3339_seconds(t).to_string()
        ),
        m.entries
    );
    match &m.last_error {
        Some(error) => {
            let _ = write!(
                h,
                "<tr><th>last error</th><td class=\"err\">{} (at {})\n{}</td></tr>",
                esc(&error.message),
                humantime::format_rfc3339_seconds(error.at),
                esc(&error.details.join("\n"))
            );
        }
        None => h.push_str("<tr><th>last error</th><td class=\"ok\">none</td></tr>"),
    }
    h.push_str("</table><h2>Members</h2><table id=\"members\"><tr><th>route</th><th>key</th><th>address</th>\
        <th>loadfactor</th><th>status</th><th>health</th><th>requests</th><th>errors</th><th>bytes in</th>\
        <th>bytes out</th><th>busy</th><th>sticky hits</th><th>agent map</th><th>change</th></tr>");
    for member in &view.members {
        member_row(&mut h, member, &view.nonce, view.agents_polled);
    }
    h.push_str("</table><p><a href=\"/balancer-manager\">Refresh</a> · JSON: <a href=\"/balancer-manager/api/\">/balancer-manager/api/</a></p></body></html>");
    h
}

fn member_row(h: &mut String, m: &ManagedMember, nonce: &str, agents_polled: bool) {
    let i = &m.info;
    let route = esc(&i.route);
    let lf = match m.loadfactor_override {
        Some(_) => format!(
            "<td class=\"override\">{} <small>(override; map {})</small></td>",
            i.loadfactor, i.map_loadfactor
        ),
        None => format!("<td>{}</td>", i.loadfactor),
    };
    let configured = m.status_override.unwrap_or(i.map_status);
    // Why the member drains when its map and override do not say so.
    let drains = if i.terminating && i.status == Status::Drain {
        Some("draining (terminating)")
    } else if i.agent_draining && i.status == Status::Drain {
        Some("draining (agent)")
    } else {
        None
    };
    // Overrides are not in the route map (the configuration in git): say who set them.
    let origin = match (&m.override_by, m.override_at_ms) {
        (Some(by), Some(at)) => format!(
            "<br><small class=\"origin\">set by {} at {}; not in the route map: commit it to the map, or reset</small>",
            esc(by),
            time(at)
        ),
        _ => String::new(),
    };
    let status = match (m.status_override, drains) {
        (Some(_), None) => format!(
            "<td class=\"override status\">{} <small>(override; map {})</small>{origin}</td>",
            i.status, i.map_status
        ),
        (Some(set), Some(why)) => format!(
            "<td class=\"override status drain-by-member\">{why} <small>(override {set}; map {})</small>{origin}</td>",
            i.map_status
        ),
        (None, Some(why)) => format!(
            "<td class=\"status drain-by-member\">{why} <small>(map {})</small>{origin}</td>",
            i.map_status
        ),
        (None, None) => format!("<td class=\"status\">{}{origin}</td>", i.status),
    };
    let health = format!(
        "<td class=\"health {}\">{}<br><small>since {}</small></td>",
        if i.healthy { "ok" } else { "bad" },
        if i.healthy { "ok" } else { "in error" },
        time(i.health_since_ms)
    );
    // The first 12 characters of the agent's hash (characters, not bytes).
    let short = |hash: Option<&str>| -> String { hash.unwrap_or("").chars().take(12).collect() };
    let agent = match (&m.agent, m.agent_map_matches) {
        (_, Some(true)) => format!(
            "<td class=\"ok\">✔ {}</td>",
            esc(&short(m.agent.as_ref().and_then(|a| a.map_hash.as_deref())))
        ),
        (Some(a), Some(false)) => format!(
            "<td class=\"bad agent-mismatch\">✘ different map: {}</td>",
            esc(&short(a.map_hash.as_deref()))
        ),
        (Some(a), None) => format!(
            "<td class=\"bad\">? {}</td>",
            esc(a.error.as_deref().unwrap_or("unknown"))
        ),
        (None, _) if agents_polled => "<td>not read yet</td>".to_owned(),
        (None, _) => "<td><small>not polled</small></td>".to_owned(),
    };
    let options: String = Status::ALL
        .iter()
        .map(|s| {
            format!(
                "<option value=\"{s}\"{}>{s}</option>",
                if *s == configured { " selected" } else { "" }
            )
        })
        .collect();
    let action = format!("/balancer-manager/members/{route}");
    let _ = write!(
        h,
        "<tr id=\"member-{route}\"><td>{route}</td><td>{}</td><td>{}</td>{lf}{status}{health}<td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td>{agent}<td class=\"forms\">\
         <form method=\"post\" action=\"{action}\" class=\"set\"><input type=\"hidden\" name=\"nonce\" value=\"{nonce}\">\
         <select name=\"status\">{options}</select> <input name=\"loadfactor\" size=\"3\" placeholder=\"{}\"> \
         <button type=\"submit\">Apply</button></form> \
         <form method=\"post\" action=\"{action}\" class=\"drain\"><input type=\"hidden\" name=\"nonce\" value=\"{nonce}\">\
         <input type=\"hidden\" name=\"status\" value=\"drain\"><button type=\"submit\" id=\"drain-{route}\">Drain</button></form> \
         <form method=\"post\" action=\"{action}\" class=\"reset\"><input type=\"hidden\" name=\"nonce\" value=\"{nonce}\">\
         <input type=\"hidden\" name=\"reset\" value=\"1\"><button type=\"submit\">Reset to map</button></form></td></tr>",
        esc(&i.key),
        esc(i.address.as_deref().unwrap_or("unresolved")),
        i.requests,
        i.errors,
        i.bytes_in,
        i.bytes_out,
        i.busy,
        i.sticky_hits,
        i.loadfactor,
        nonce = esc(nonce),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
