//! `stickyroute-proxy import-apache` on the classic write-up's exact configuration.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn the_blogs_config_becomes_a_route_map_and_a_proxy_config() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_stickyroute-proxy"))
        .args([
            "import-apache",
            &fixture("seed-proxy.conf"),
            &fixture("seed-backend.conf"),
        ])
        .args([
            "--rewrite-map",
            &fixture("seed-routemap"),
            "--out",
            out.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "{stderr}");

    let routemap = std::fs::read_to_string(out.path().join("routemap")).unwrap();
    let entries: Vec<&str> = routemap.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        entries,
        [
            "10.16.4.4 www1 loadfactor=60",
            "10.16.4.6 www2 loadfactor=60",
            "10.16.4.7 www3 loadfactor=60",
            "10.12.2.13 www0 loadfactor=20"
        ]
    );

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("proxy.json")).unwrap())
            .unwrap();
    assert_eq!(config["stickysession"], "balanceid");
    assert_eq!(config["nofailover"], true);
    assert_eq!(config["lbmethod"], "byrequests");
    assert_eq!(config["member_port"], 80);
    assert_eq!(config["admin_allow"], serde_json::json!(["10.8.2.0/24"]));

    // What is not translated is said, with where it was.
    assert!(
        stderr.contains("skipped <IfModule !proxy_balancer_module>"),
        "{stderr}"
    );
    assert!(stderr.contains("ProxyPass /balancer-manager !"), "{stderr}");
    assert!(
        stderr.contains("CacheIgnoreHeaders Set-Cookie: not needed"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("has no BalancerMember"),
        "the RewriteMap and the members agree: {stderr}"
    );
    // The backends' RewriteRule trick becomes the agent's flags.
    assert!(
        stdout.contains("--session-cookie-regex '(?i)(existing_session_cookie)' --cookie-name balanceid --cookie-prefix route --cookie-domain host"),
        "{stdout}"
    );

    // The result is a configuration the proxy accepts.
    let check = Command::new(env!("CARGO_BIN_EXE_stickyroute-proxy"))
        .args([
            "--config",
            out.path().join("proxy.json").to_str().unwrap(),
            "--check-config",
        ])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("4 members"));

    // It does not overwrite without --force.
    let again = Command::new(env!("CARGO_BIN_EXE_stickyroute-proxy"))
        .args([
            "import-apache",
            &fixture("seed-proxy.conf"),
            "--out",
            out.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}

#[test]
fn a_rewrite_map_that_disagrees_with_the_members_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("routemap");
    std::fs::write(&map, "10.16.4.4 www1 10.16.4.6 www9 10.99.0.1 www7\n").unwrap();
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_stickyroute-proxy"))
        .args([
            "import-apache",
            &fixture("seed-proxy.conf"),
            "--rewrite-map",
            map.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success());
    assert!(
        stderr.contains("10.16.4.6 has route www9 there but www2 in its BalancerMember"),
        "{stderr}"
    );
    assert!(
        stderr.contains("10.99.0.1 www7 has no BalancerMember"),
        "{stderr}"
    );
    assert!(
        stderr.contains("has no entry for BalancerMember 10.16.4.7 (www3)"),
        "{stderr}"
    );
}
