//! The route map parser, on any bytes: never panics, lists at most the capped number of
//! errors, and a valid map survives a round trip through its canonical text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use routemap::RouteMap;
use routemap::parse::MAX_LISTED_ERRORS;

fuzz_target!(|data: &[u8]| {
    match RouteMap::parse(data) {
        Ok(map) => {
            let again = RouteMap::parse(map.to_text().as_bytes()).expect("canonical text parses");
            assert_eq!(again.hash(), map.hash());
            for entry in map.entries() {
                assert!(map.by_route(entry.route.as_str()).is_some());
                assert!(map.by_key(&entry.key).is_some());
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            assert!(errors.len() <= MAX_LISTED_ERRORS + 1);
            for error in &errors {
                let _ = error.to_string();
            }
        }
    }
});
