//! The balancer-manager page: server-rendered HTML that works without JavaScript. Every
//! value is escaped; every form posts the per-process nonce.

use crate::manager::api::{ManagedMember, View};
use crate::replicas::ReplicasView;
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
form{display:inline;margin:0}td.health,td.forms,td.latency{white-space:nowrap}tr.totals td{font-weight:bold;background:#f3f3f3}body{font-size:14px}.info{display:flex;flex-wrap:wrap;gap:0 2em}td.status{min-width:19em}small.origin{color:#555}code{font-size:.9em}.err{white-space:pre-wrap;color:#b00020}";

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
    // The balancer, overrides and map: after the members, side by side.
    let mut info = String::with_capacity(4 * 1024);
    let b = &view.balancer;
    let _ = write!(
        info,
        "<section><h2>Balancer</h2><table id=\"balancer\"><tr><th>stickysession</th><td>{}</td><th>nofailover</th><td>{}</td>\
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
        info,
        "</section><section><h2>Overrides</h2><table id=\"overrides\"><tr><th>kept</th><td>{kept}</td></tr>\
         <tr><th>version applied</th><td id=\"overrides-version\">{}</td></tr>",
        o.version
    );
    if let Some((error, at)) = o
        .status
        .as_ref()
        .and_then(|f| f.last_error.as_deref().zip(f.last_error_at_ms))
    {
        let _ = write!(
            info,
            "<tr><th>last error</th><td class=\"err\">{} (at {}); the last good overrides stay applied</td></tr>",
            esc(error),
            time(at)
        );
    }
    info.push_str("</table>");
    let m = &view.map;
    let hash = m.hash.as_deref().unwrap_or("none loaded");
    let _ = write!(
        info,
        "</section><section><h2>Route map</h2><table id=\"map\"><tr><th>source</th><td><code>{}</code></td></tr>\
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
                info,
                "<tr><th>last error</th><td class=\"err\">{} (at {})\n{}</td></tr>",
                esc(&error.message),
                humantime::format_rfc3339_seconds(error.at),
                esc(&error.details.join("\n"))
            );
        }
        None => info.push_str("<tr><th>last error</th><td class=\"ok\">none</td></tr>"),
    }
    info.push_str("</table></section>");
    h.push_str("<h2>Members</h2><p class=\"tools\"><span id=\"auto-box\" hidden><label><input type=\"checkbox\" id=\"auto\"> refresh every 5 s</label> · </span>\
        <a href=\"/balancer-manager\">Refresh</a> · export: <a href=\"/balancer-manager/api/\">JSON</a>, <a href=\"/balancer-manager/api/members.csv\">CSV</a></p>\
        <table id=\"members\"><tr><th>route</th><th>status</th><th>health</th><th>change</th><th>loadfactor</th>\
        <th>req/s</th><th>requests</th><th>in flight</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th>\
        <th>head p50 / p99</th><th>errors</th><th>bytes in / out</th><th>sticky hits</th><th>key, address</th><th>agent map</th></tr>");
    for member in &view.members {
        member_row(&mut h, member, &view.nonce, view.agents_polled);
    }
    totals_row(&mut h, &view.members);
    h.push_str("</table><p><small>Responses, latency and errors count since the proxy started; latency is the time to the member's response head, from the histogram's buckets.</small></p>");
    replicas_section(&mut h, view.replicas.as_ref());
    let _ = write!(h, "<div class=\"info\">{info}</div>");
    h.push_str("<script src=\"/balancer-manager/refresh.js\"></script></body></html>");
    h
}

/// The page's only script: ticking the box reloads the tables every 5 s (not while a form
/// field is being edited). Without JavaScript the page is the same, without the box.
pub const REFRESH_JS: &str = r#"(function () {
  var box = document.getElementById("auto");
  if (!box || !window.fetch || !window.DOMParser) return;
  document.getElementById("auto-box").hidden = false;
  box.checked = localStorage.getItem("stickyroute-auto-refresh") === "1";
  box.addEventListener("change", function () {
    localStorage.setItem("stickyroute-auto-refresh", box.checked ? "1" : "0");
  });
  setInterval(function () {
    var members = document.getElementById("members");
    if (!box.checked || (members && members.contains(document.activeElement))) return;
    fetch(location.pathname, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html");
        ["balancer", "overrides", "map", "members", "replicas"].forEach(function (id) {
          var now = document.getElementById(id), next = fresh.getElementById(id);
          if (now && next) now.replaceWith(next);
        });
      })
      .catch(function () {});
  }, 5000);
})();
"#;

/// The replicas sharing this balancer, and whether each applies the latest map and
/// overrides; or how to have them listed.
fn replicas_section(h: &mut String, replicas: Option<&ReplicasView>) {
    let Some(view) = replicas else {
        h.push_str("<h2>Replicas</h2><p id=\"replicas\">Not known: give every proxy the same \
            <code>--overrides-file</code>, or <code>--proxy-service</code> (the proxies' own Service) \
            in Kubernetes, to list them here.</p>");
        return;
    };
    let _ = write!(
        h,
        "<h2>Replicas</h2><div id=\"replicas\"><p>From <code>{}</code>, read every {} s. \
         Latest overrides version: <b>{}</b>; latest map: <code>{}</code>.</p>",
        esc(&view.source),
        crate::replicas::POLL_INTERVAL.as_secs(),
        view.latest_overrides_version
            .map_or_else(|| "-".to_owned(), |v| v.to_string()),
        esc(&view
            .latest_map_hash
            .as_deref()
            .map_or_else(|| "-".to_owned(), short_hash)),
    );
    if let Some(error) = &view.error {
        let _ = write!(
            h,
            "<p class=\"err\">The list could not be read: {}; the last list is shown.</p>",
            esc(error)
        );
    }
    h.push_str("<table id=\"replicas-table\"><tr><th>replica</th><th>admin</th><th>map</th><th>overrides</th><th>state</th><th>version</th><th>checked</th></tr>");
    for r in &view.replicas {
        let replica = &r.replica;
        let name = if replica.this {
            format!("{} <small>(this one)</small>", esc(&replica.name))
        } else {
            esc(&replica.name)
        };
        let current = |current: Option<bool>, what: String| match current {
            Some(true) => format!("<td class=\"ok\">{what}: latest</td>"),
            Some(false) => format!("<td class=\"bad\">{what}: behind</td>"),
            None if replica.error.is_none() => format!("<td>{what}</td>"),
            None => "<td>-</td>".to_owned(),
        };
        let state = match (&replica.error, replica.draining) {
            (Some(error), _) if replica.answered => format!(
                "<td class=\"err\">answers, but cannot be read: {}</td>",
                esc(error)
            ),
            (Some(error), _) => format!(
                "<td class=\"err\">unreachable since {}: {}</td>",
                replica
                    .unreachable_since_ms
                    .map_or_else(|| "-".to_owned(), time),
                esc(error)
            ),
            (None, Some(true)) => "<td>shutting down</td>".to_owned(),
            (None, _) => "<td class=\"ok\">answering</td>".to_owned(),
        };
        let _ = write!(
            h,
            "<tr data-admin=\"{}\"><td>{name}</td><td><code>{}</code></td>{}{}{state}<td>{}</td><td>{}</td></tr>",
            esc(&replica.admin),
            esc(&replica.admin),
            current(
                r.map_current,
                format!(
                    "<code>{}</code>",
                    esc(&replica
                        .map_hash
                        .as_deref()
                        .map_or_else(|| "none".to_owned(), short_hash))
                )
            ),
            current(
                r.overrides_current,
                match (replica.overrides_version, replica.overrides_shared) {
                    (Some(v), Some(true)) => format!("version {v}"),
                    (Some(v), _) => format!("version {v}, its own (not shared)"),
                    (None, _) => "not reported (an older version)".to_owned(),
                }
            ),
            esc(replica.version.as_deref().unwrap_or("-")),
            time(replica.checked_at_ms),
        );
    }
    h.push_str("</table></div>");
}

/// The first 12 characters (not bytes) of a map hash: enough to tell maps apart on the
/// page.
fn short_hash(hash: &str) -> String {
    hash.chars().take(12).collect()
}

fn totals_row(h: &mut String, members: &[ManagedMember]) {
    let sum = |f: &dyn Fn(&ManagedMember) -> u64| -> u64 { members.iter().map(f).sum() };
    let classes: Vec<u64> = (0..5)
        .map(|c| sum(&|m| m.info.responses.as_array()[c]))
        .collect();
    let _ = write!(
        h,
        "<tr id=\"totals\" class=\"totals\"><th>total</th><td></td><td>{} of {} ok</td><td></td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td></td><td>{}</td><td>{} / {}</td><td>{}</td><td></td><td></td></tr>",
        members.iter().filter(|m| m.info.healthy).count(),
        members.len(),
        sum(&|m| u64::from(m.info.loadfactor)),
        sum(&|m| m.info.rate_per_s),
        sum(&|m| m.info.requests),
        members.iter().map(|m| m.info.busy).sum::<i64>(),
        classes[1],
        classes[2],
        classes[3],
        classes[4],
        sum(&|m| m.info.errors),
        sum(&|m| m.info.bytes_in),
        sum(&|m| m.info.bytes_out),
        sum(&|m| m.info.sticky_hits),
    );
}

/// The members as CSV, one row per member, for spreadsheets and scripts.
pub fn csv(view: &View) -> String {
    let mut out = String::from(
        "route,key,address,status,map_status,loadfactor,map_loadfactor,healthy,health_since,rate_per_s,requests,in_flight,\
         responses_1xx,responses_2xx,responses_3xx,responses_4xx,responses_5xx,head_p50_ms,head_p99_ms,errors,last_error,last_error_at,\
         bytes_in,bytes_out,sticky_hits,override_by,override_at\n",
    );
    let opt_ms = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let opt_time = |v: Option<u64>| v.map(time).unwrap_or_default();
    for m in &view.members {
        let i = &m.info;
        let c = i.responses.as_array();
        let fields = [
            i.route.clone(),
            i.key.clone(),
            i.address.clone().unwrap_or_default(),
            i.status.to_string(),
            i.map_status.to_string(),
            i.loadfactor.to_string(),
            i.map_loadfactor.to_string(),
            i.healthy.to_string(),
            time(i.health_since_ms),
            i.rate_per_s.to_string(),
            i.requests.to_string(),
            i.busy.to_string(),
            c[0].to_string(),
            c[1].to_string(),
            c[2].to_string(),
            c[3].to_string(),
            c[4].to_string(),
            opt_ms(i.head_p50_ms),
            opt_ms(i.head_p99_ms),
            i.errors.to_string(),
            i.last_error.unwrap_or_default().to_owned(),
            opt_time(i.last_error_at_ms),
            i.bytes_in.to_string(),
            i.bytes_out.to_string(),
            i.sticky_hits.to_string(),
            m.override_by.clone().unwrap_or_default(),
            opt_time(m.override_at_ms),
        ];
        let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// RFC 4180 quoting, and a leading `'` for text a spreadsheet would run as a formula.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) && text.parse::<f64>().is_err() {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
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
    let health_text = match (i.healthy, i.last_error) {
        (true, _) => "ok".to_owned(),
        (false, Some(kind)) => format!("in error ({kind})"),
        (false, None) => "in error".to_owned(),
    };
    let health = format!(
        "<td class=\"health {}\">{health_text}<br><small>since {}</small></td>",
        if i.healthy { "ok" } else { "bad" },
        time(i.health_since_ms)
    );
    let short = |hash: Option<&str>| short_hash(hash.unwrap_or(""));
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
    let hidden = format!(
        "<input type=\"hidden\" name=\"nonce\" value=\"{}\">",
        esc(nonce)
    );
    let forms = format!(
        "<td class=\"forms\">\
         <form method=\"post\" action=\"{action}\" class=\"set\">{hidden}\
         <select name=\"status\">{options}</select> <input name=\"loadfactor\" size=\"3\" placeholder=\"{}\"> \
         <button type=\"submit\">Apply</button></form> \
         <form method=\"post\" action=\"{action}\" class=\"drain\">{hidden}\
         <input type=\"hidden\" name=\"status\" value=\"drain\"><button type=\"submit\" id=\"drain-{route}\">Drain</button></form> \
         <form method=\"post\" action=\"{action}\" class=\"reset\">{hidden}\
         <input type=\"hidden\" name=\"reset\" value=\"1\"><button type=\"submit\">Reset to map</button></form>{}</td>",
        i.loadfactor,
        if i.healthy {
            String::new()
        } else {
            format!(
                " <form method=\"post\" action=\"{action}\" class=\"clear\">{hidden}\
                 <input type=\"hidden\" name=\"clear_error\" value=\"1\"><button type=\"submit\" id=\"clear-{route}\">Clear error</button></form>"
            )
        }
    );
    let latency = match (i.head_p50_ms, i.head_p99_ms) {
        (Some(p50), Some(p99)) => format!("{p50:.1} / {p99:.1} ms"),
        _ => "-".to_owned(),
    };
    let errors = match (i.last_error, i.last_error_at_ms) {
        (Some(kind), Some(at)) => format!(
            "{}<br><small class=\"last-error\">last: {kind} at {}</small>",
            i.errors,
            time(at)
        ),
        _ => i.errors.to_string(),
    };
    let c = i.responses.as_array();
    let _ = write!(
        h,
        "<tr id=\"member-{route}\"><td>{route}</td>{status}{health}{forms}{lf}<td class=\"rate\">{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"latency\">{latency}</td><td class=\"errors\">{errors}</td>\
         <td>{} / {}</td><td>{}</td><td>{}<br><small>{}</small></td>{agent}</tr>",
        i.rate_per_s,
        i.requests,
        i.busy,
        c[1],
        c[2],
        c[3],
        c[4],
        i.bytes_in,
        i.bytes_out,
        i.sticky_hits,
        esc(&i.key),
        esc(i.address.as_deref().unwrap_or("unresolved")),
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
