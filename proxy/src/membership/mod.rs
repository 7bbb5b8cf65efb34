//! Where the addresses of a map's name keys come from, and what state each endpoint is in.
//!
//! - [`dns`] (the default): `KEY` + `--member-domain-suffix`, resolved again every
//!   `--dns-refresh`. A headless Service publishes a pod's name only while it is ready,
//!   unless the Service sets `publishNotReadyAddresses` (the chart does, so a terminating
//!   pod that still serves its sessions stays reachable by name).
//! - [`endpoint_slices`] (`--member-service NAMESPACE/NAME`, with the `kubernetes`
//!   feature): the Service's EndpointSlices, watched through the API. A pod's address is
//!   known the moment the slice changes (no DNS cache), and its conditions travel with it:
//!   a terminating pod that is still serving keeps its sessions and gets no new ones, one
//!   that is not serving is unusable.
//!
//! Either way the result is a [`Resolved`] table of name key → [`Found`], from which each
//! member table is built.

pub mod dns;
#[cfg(feature = "kubernetes")]
pub mod endpoint_slices;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// A name key's endpoint: where it is, and whether it is on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub ip: IpAddr,
    /// Terminating but still serving: its sessions stay, new ones go elsewhere.
    pub terminating: bool,
}

/// Name keys of the map and what they were found to be (`None`: no usable endpoint).
pub type Resolved = HashMap<Arc<str>, Option<Found>>;

/// `--member-service`: the Service whose EndpointSlices give the members' addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceRef {
    /// `NAMESPACE/NAME`, both checked against Kubernetes' naming rules, so a typo fails at
    /// start-up rather than as a watch that never finds anything.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (namespace, name) = text.split_once('/').ok_or_else(|| {
            format!("{text:?}: give the Service as NAMESPACE/NAME, e.g. shop/web")
        })?;
        for (what, part) in [("namespace", namespace), ("Service name", name)] {
            if !routemap::source::is_dns_label(part) {
                return Err(format!(
                    "{text:?}: {part:?} is not a valid {what} (lower-case letters, digits and '-', at most 63)"
                ));
            }
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// `service:NAMESPACE/NAME`, as logs and `/status` name it.
impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service:{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_namespace_slash_name() {
        let service = ServiceRef::parse("shop/web").unwrap();
        assert_eq!(service.to_string(), "service:shop/web");
        for bad in [
            "web",
            "shop/",
            "/web",
            "Shop/web",
            "shop/web.x",
            "shop/web/x",
        ] {
            assert!(ServiceRef::parse(bad).is_err(), "{bad}");
        }
    }
}
