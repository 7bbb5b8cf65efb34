//! Members' addresses and conditions from a Service's EndpointSlices (`discovery.k8s.io/v1`),
//! watched through the Kubernetes API with `--member-service NAMESPACE/NAME`.
//!
//! The slices are listed and watched with the label `kubernetes.io/service-name=NAME` in
//! that namespace only, so the proxy's Role needs `get`, `list` and `watch` on
//! `endpointslices` there and nothing more. kube's watcher does the protocol work (re-list
//! after `410 Gone`, resumption, backoff). An endpoint belongs to the name key that is its
//! pod's name (`targetRef`) or its `hostname`. Its conditions decide what the member is:
//!
//! | serving | terminating | member |
//! | --- | --- | --- |
//! | yes | no | usable |
//! | yes | yes | in drain: its sessions stay, new sessions go elsewhere |
//! | no | — | unusable (its sessions follow `--nofailover`) |
//!
//! `serving` is the pod's readiness whatever `publishNotReadyAddresses` says (which is what
//! `ready` follows); an absent condition means serving and not terminating, as the API
//! documents. What was last seen is kept through trouble: an API error changes nothing, an
//! empty list (the Service deleted, say) keeps the last view, and the endpoints of a deleted
//! slice are kept until they show up in another one (the controller moves endpoints between
//! slices) or a full list no longer has them.

use super::{Found, Resolved, ServiceRef};
use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use routemap::source::StartError;
use routemap::{Key, Snapshot};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// One pod's endpoint as its slice says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Condition {
    pub ip: IpAddr,
    pub serving: bool,
    pub terminating: bool,
}

/// Every endpoint of the Service, by pod name and by hostname.
pub type View = HashMap<String, Condition>;

/// Starts watching `service`'s EndpointSlices; the receiver holds the latest view, `None`
/// until the first list came back.
pub async fn start(service: ServiceRef) -> Result<watch::Receiver<Option<Arc<View>>>, StartError> {
    let client = routemap::source::kube_client().await?;
    let (sender, receiver) = watch::channel(None);
    tokio::spawn(follow(client, service, sender));
    Ok(receiver)
}

async fn follow(client: Client, service: ServiceRef, sender: watch::Sender<Option<Arc<View>>>) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &service.namespace);
    let selector =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={}", service.name));
    let mut events = std::pin::pin!(watcher(api, selector).default_backoff());
    let mut slices = Slices::default();
    let mut listing: Option<HashMap<String, EndpointSlice>> = None;
    while let Some(event) = events.next().await {
        let changed = match event {
            Ok(Event::Init) => {
                listing = Some(HashMap::new());
                false
            }
            Ok(Event::InitApply(slice)) => {
                if let Some(listing) = &mut listing {
                    listing.insert(name_of(&slice), slice);
                }
                false
            }
            Ok(Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                if listed.is_empty() && !slices.is_empty() {
                    tracing::warn!(%service, "the Service has no EndpointSlices; keeping the members' last known endpoints");
                    false
                } else {
                    slices.replace(listed);
                    true
                }
            }
            Ok(Event::Apply(slice)) => {
                slices.apply(slice);
                true
            }
            Ok(Event::Delete(slice)) => {
                tracing::info!(%service, slice = name_of(&slice), "EndpointSlice deleted; its endpoints are kept until another slice has them or a full list drops them");
                slices.delete(slice);
                true
            }
            Err(error) => {
                tracing::warn!(%service, %error, "Kubernetes API: cannot follow the EndpointSlices; keeping the members' last known endpoints");
                false
            }
        };
        if changed {
            let view = Arc::new(slices.view());
            sender.send_if_modified(|current| {
                if current.as_deref() == Some(&*view) {
                    return false;
                }
                *current = Some(view);
                true
            });
        }
    }
}

fn name_of(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

/// The slices seen, and those deleted since the last full list.
#[derive(Default)]
struct Slices {
    live: HashMap<String, EndpointSlice>,
    deleted: HashMap<String, EndpointSlice>,
}

impl Slices {
    fn is_empty(&self) -> bool {
        self.live.is_empty() && self.deleted.is_empty()
    }

    fn replace(&mut self, listed: HashMap<String, EndpointSlice>) {
        self.live = listed;
        self.deleted.clear();
    }

    fn apply(&mut self, slice: EndpointSlice) {
        let name = name_of(&slice);
        self.deleted.remove(&name);
        self.live.insert(name, slice);
    }

    fn delete(&mut self, slice: EndpointSlice) {
        let name = name_of(&slice);
        let last = self.live.remove(&name).unwrap_or(slice);
        self.deleted.insert(name, last);
    }

    /// Deleted slices' endpoints first, so that live ones win; of two live endpoints for
    /// one pod (a slice being replaced), the one that serves and is not terminating.
    fn view(&self) -> View {
        let mut view = View::new();
        let mut from_live = std::collections::HashSet::new();
        let slices = self
            .deleted
            .values()
            .map(|s| (s, false))
            .chain(self.live.values().map(|s| (s, true)));
        for (slice, live) in slices {
            for endpoint in &slice.endpoints {
                let Some(condition) = condition_of(endpoint) else {
                    continue;
                };
                for key in keys_of(endpoint) {
                    let better = match view.get(key) {
                        None => true,
                        Some(_) if live && !from_live.contains(key) => true,
                        Some(old) => rank(condition) > rank(*old),
                    };
                    if better {
                        view.insert(key.to_owned(), condition);
                        if live {
                            from_live.insert(key.to_owned());
                        }
                    }
                }
            }
        }
        view
    }
}

fn rank(c: Condition) -> u8 {
    u8::from(c.serving) * 2 + u8::from(!c.terminating)
}

/// The pod name (`targetRef` of kind Pod) and the hostname an endpoint answers to.
fn keys_of(endpoint: &Endpoint) -> impl Iterator<Item = &str> {
    let pod = endpoint
        .target_ref
        .as_ref()
        .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
        .and_then(|r| r.name.as_deref());
    pod.into_iter()
        .chain(endpoint.hostname.as_deref().filter(|h| Some(*h) != pod))
}

/// The endpoint's first address and its conditions; `None` without a usable address.
fn condition_of(endpoint: &Endpoint) -> Option<Condition> {
    let ip = endpoint
        .addresses
        .iter()
        .find_map(|a| a.parse::<IpAddr>().ok())?;
    let conditions = endpoint.conditions.clone().unwrap_or_default();
    Some(Condition {
        ip,
        serving: conditions.serving.unwrap_or(true),
        terminating: conditions.terminating.unwrap_or(false),
    })
}

/// Every name key of `snapshot`, from `view`: usable while serving (in drain while also
/// terminating), `None` when not serving or not in the Service at all. Changes are logged.
pub fn resolve(snapshot: &Snapshot, view: Option<&View>, previous: &Resolved) -> Resolved {
    let mut resolved = Resolved::new();
    for entry in snapshot.entries() {
        let Key::Name(name) = &entry.key else {
            continue;
        };
        let condition = view.and_then(|v| v.get(&**name)).copied();
        let found = condition.filter(|c| c.serving).map(|c| Found {
            ip: c.ip,
            terminating: c.terminating,
        });
        if previous.get(name) != Some(&found) {
            match (condition, found) {
                (_, Some(found)) => {
                    tracing::info!(%name, ip = %found.ip, terminating = found.terminating, "member endpoint from the EndpointSlices")
                }
                (Some(c), None) => {
                    tracing::warn!(%name, ip = %c.ip, "member endpoint is not serving (its pod is not ready); the member is unusable until it is")
                }
                (None, None) => {
                    tracing::warn!(%name, "no endpoint of the Service has this pod name or hostname; the member is unusable until one has")
                }
            }
        }
        resolved.insert(name.clone(), found);
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::EndpointConditions;

    fn endpoint(pod: &str, ip: &str, serving: Option<bool>, terminating: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.to_owned()],
            conditions: Some(EndpointConditions {
                ready: None,
                serving,
                terminating,
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".to_owned()),
                name: Some(pod.to_owned()),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        }
    }

    fn slice(name: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            address_type: "IPv4".to_owned(),
            endpoints,
            ports: None,
        }
    }

    #[test]
    fn conditions_default_as_the_api_says_and_hostnames_count_too() {
        let mut s = Slices::default();
        let mut by_hostname = endpoint("web-2", "10.0.0.3", None, None);
        by_hostname.target_ref = None;
        by_hostname.hostname = Some("web-2".to_owned());
        s.apply(slice(
            "web-abc",
            vec![
                endpoint("web-0", "10.0.0.1", None, None),
                endpoint("web-1", "10.0.0.2", Some(true), Some(true)),
                by_hostname,
            ],
        ));
        let view = s.view();
        assert_eq!(
            view["web-0"],
            Condition {
                ip: "10.0.0.1".parse().unwrap(),
                serving: true,
                terminating: false
            }
        );
        assert!(view["web-1"].terminating && view["web-1"].serving);
        assert_eq!(view["web-2"].ip.to_string(), "10.0.0.3");
    }

    #[test]
    fn a_deleted_slice_is_kept_until_another_has_its_endpoints() {
        let mut s = Slices::default();
        s.apply(slice(
            "a",
            vec![endpoint("web-0", "10.0.0.1", Some(true), None)],
        ));
        s.delete(slice("a", vec![]));
        assert_eq!(s.view()["web-0"].ip.to_string(), "10.0.0.1", "kept");
        s.apply(slice(
            "b",
            vec![endpoint("web-0", "10.0.0.9", Some(true), None)],
        ));
        assert_eq!(
            s.view()["web-0"].ip.to_string(),
            "10.0.0.9",
            "the live slice wins"
        );
        s.replace(HashMap::new());
        assert!(s.view().is_empty(), "a full list is the truth");
    }
}
