//! The Apache configuration importer, on any text (configurations pasted from wikis are
//! mangled in every way): never panics, and an imported map is a valid route map.
#![no_main]

use libfuzzer_sys::fuzz_target;
use routemap::RouteMap;
use stickyroute_proxy::import_apache::import;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(data);
    // With the low bit set, the first line doubles as the RewriteMap to check against the
    // members; the next bit picks a balancer by name.
    let rewrite_map = text.lines().next().unwrap_or_default();
    let map = (flags & 1 == 1).then_some(("routemap", rewrite_map));
    let only = (flags & 2 == 2).then_some("backend.example.com");
    if let Ok(imported) = import(&[("proxy.conf", &text)], map, only) {
        RouteMap::parse(imported.routemap.as_bytes()).expect("the imported map is valid");
    }
});
