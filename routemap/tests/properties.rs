//! Properties of the parser and the cookie codec over generated input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use routemap::cookie::{StickyCookie, cookies, find_cookie, route_of};
use routemap::{Entry, Key, LoadFactor, RouteId, RouteMap, Status};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn route() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        any::<u32>().prop_map(|n| Key::from_addr(IpAddr::V4(Ipv4Addr::from(n)))),
        any::<u128>().prop_map(|n| Key::from_addr(IpAddr::V6(Ipv6Addr::from(n)))),
        "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z][a-z0-9]{0,10}){0,3}"
            .prop_filter_map("all-numeric names are addresses", |s| Key::parse(&s).ok()),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        key(),
        route(),
        1u32..=100,
        proptest::option::of(1u16..),
        proptest::sample::select(Status::ALL.to_vec()),
    )
        .prop_map(|(key, route, lf, port, status)| Entry {
            key,
            route: RouteId::parse(&route).expect("strategy makes valid routes"),
            loadfactor: LoadFactor::new(lf).expect("strategy makes valid loadfactors"),
            port,
            status,
            line: 0,
        })
}

fn valid_map() -> impl Strategy<Value = Vec<Entry>> {
    proptest::collection::vec(entry(), 0..40).prop_map(|entries| {
        let mut seen_keys = std::collections::HashSet::new();
        let mut seen_routes = std::collections::HashSet::new();
        entries
            .into_iter()
            .filter(|e| seen_keys.insert(e.key.clone()) && seen_routes.insert(e.route.clone()))
            .collect()
    })
}

/// Writes entries the way people do: several pairs per line, tabs, comments, attributes in
/// any order, defaults spelled out or not.
fn messy_text(entries: &[Entry], layout: &[u8]) -> String {
    let mut out = String::from("# generated\n");
    for (i, e) in entries.iter().enumerate() {
        let choice = layout.get(i).copied().unwrap_or(0);
        let mut attrs = Vec::new();
        if e.loadfactor != LoadFactor::DEFAULT || choice & 1 == 1 {
            attrs.push(format!("loadfactor={}", e.loadfactor));
        }
        if let Some(port) = e.port {
            attrs.push(format!("port={port}"));
        }
        if e.status != Status::Enabled || choice & 2 == 2 {
            attrs.push(format!("status={}", e.status));
        }
        if choice & 4 == 4 {
            attrs.reverse();
        }
        let sep = if choice & 8 == 8 { "\t" } else { "  " };
        out.push_str(&format!("{}{sep}{}", e.key, e.route));
        for attr in attrs {
            out.push_str(sep);
            out.push_str(&attr);
        }
        out.push_str(match choice % 4 {
            0 => "\n",
            1 => " # note\n",
            2 => "\r\n\n",
            _ => " ",
        });
    }
    out
}

proptest! {
    #[test]
    fn written_maps_parse_back_equal(entries in valid_map(), layout in proptest::collection::vec(any::<u8>(), 40)) {
        let map = RouteMap::from_entries(entries).expect("unique keys and routes");
        let canonical = RouteMap::parse(map.to_text().as_bytes()).expect("canonical text parses");
        prop_assert_eq!(canonical.hash(), map.hash());
        let messy = messy_text(map.entries(), &layout);
        let reread = RouteMap::parse(messy.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e:?}\n{messy}")))?;
        prop_assert_eq!(reread.len(), map.len());
        for (a, b) in reread.entries().iter().zip(map.entries()) {
            prop_assert_eq!((&a.key, &a.route, a.loadfactor, a.port, a.status), (&b.key, &b.route, b.loadfactor, b.port, b.status));
        }
        prop_assert_eq!(reread.hash(), map.hash());
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = RouteMap::parse(&bytes);
    }

    #[test]
    fn parsing_map_like_text_never_panics(text in "([a-z0-9.:=# \t-]{0,12}[ \n]){0,30}") {
        if let Err(errors) = RouteMap::parse(text.as_bytes()) {
            let lines = text.split('\n').count();
            for e in errors {
                prop_assert!(e.line >= 1 && e.line <= lines, "line {} of {}", e.line, lines);
            }
        }
    }

    #[test]
    fn cookie_reading_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for cookie in cookies(&bytes) {
            let _ = route_of(cookie.value);
        }
        let _ = route_of(&bytes);
    }

    #[test]
    fn cookie_values_round_trip(prefix in "[!#-+\\--:<-\\[\\]-~]{1,20}", route in route()) {
        let codec = StickyCookie::new("balanceid", &prefix).expect("strategy makes valid prefixes");
        let value = codec.value_for(&RouteId::parse(&route).expect("valid"));
        prop_assert_eq!(route_of(value.as_bytes()), Some(route.as_str()));
    }

    #[test]
    fn cookie_headers_round_trip(
        pairs in proptest::collection::vec(("[A-Za-z0-9_!#$%&'*+.^`|~-]{1,12}", "[!#-+\\--:<-\\[\\]-~]{0,20}", any::<bool>()), 1..10),
        split_at in any::<proptest::sample::Index>(),
        tight in any::<bool>(),
    ) {
        let sep = if tight { ";" } else { "; " };
        let rendered: Vec<String> = pairs
            .iter()
            .map(|(n, v, quoted)| if *quoted { format!("{n}=\"{v}\"") } else { format!("{n}={v}") })
            .collect();
        // The same cookies as one header (HTTP/1.1) and split over two (HTTP/2).
        let cut = split_at.index(rendered.len());
        let one = rendered.join(sep);
        let (first, second) = (rendered[..cut].join(sep), rendered[cut..].join(sep));
        let parsed_one: Vec<_> = cookies(one.as_bytes()).collect();
        let parsed_two: Vec<_> = [first.as_bytes(), second.as_bytes()].into_iter().flat_map(cookies).collect();
        prop_assert_eq!(&parsed_one, &parsed_two);
        prop_assert_eq!(parsed_one.len(), pairs.len());
        for (cookie, (name, value, _)) in parsed_one.iter().zip(&pairs) {
            prop_assert_eq!(cookie.name, name.as_bytes());
            prop_assert_eq!(cookie.value, value.as_bytes());
        }
        let (name, value, _) = &pairs[0];
        let headers = [first.as_bytes(), second.as_bytes()];
        let found = find_cookie(headers, name.as_bytes());
        prop_assert_eq!(found, Some(value.as_bytes()));
    }
}
