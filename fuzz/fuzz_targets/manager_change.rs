//! The balancer-manager's change requests, as JSON and as a form, from any bytes: never
//! panic; a parsed change is applied or refused by the same validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stickyroute_proxy::manager::api::Change;

fuzz_target!(|data: &[u8]| {
    for parsed in [Change::from_json(data), Change::from_form(data)] {
        match parsed {
            Ok(change) => {
                let _ = (change.nonce, change.status, change.loadfactor, change.reset);
            }
            Err(message) => assert!(!message.is_empty()),
        }
    }
});
