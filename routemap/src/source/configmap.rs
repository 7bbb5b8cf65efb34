//! Follows one key of one ConfigMap through the Kubernetes API: changes arrive within about
//! a second of `kubectl apply`, where a mounted volume takes up to two minutes.
//!
//! kube's watcher does the protocol work: a list filtered by the object's name (so a Role
//! limited to that one ConfigMap is enough), then a watch from the list's resourceVersion,
//! a re-list after `410 Gone`, resumption when a stream ends, and backoff after errors. The
//! errors are items of its stream, so they are reported here and the loop goes on; after
//! one, a direct read of the ConfigMap confirms recovery (see `follow`).

use super::location::{ConfigMapRef, StartError};
use super::{Source, SourceFuture};
use crate::error::LoadError;
use crate::live::Publisher;
use crate::map::RouteMap;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Config};
use std::time::Duration;

pub struct ConfigMapSource {
    client: Client,
    target: ConfigMapRef,
}

impl ConfigMapSource {
    /// Sets up the client from `KUBECONFIG` (or `~/.kube/config`), else from the in-cluster
    /// service account. The API server is not contacted yet.
    pub async fn connect(target: ConfigMapRef) -> Result<Self, StartError> {
        Ok(Self::with_client(kube_client().await?, target))
    }

    /// With a client set up by the caller (benchmarks and tools that pick their cluster).
    pub fn with_client(client: Client, target: ConfigMapRef) -> Self {
        Self { client, target }
    }
}

/// A Kubernetes client from `KUBECONFIG` (or `~/.kube/config`), else from the in-cluster
/// service account, as every API reader of the binaries sets it up. Nothing is contacted yet.
pub async fn kube_client() -> Result<Client, StartError> {
    let config = Config::infer()
        .await
        .map_err(|e| StartError::Kubernetes(e.to_string()))?;
    Client::try_from(config).map_err(|e| StartError::Kubernetes(e.to_string()))
}

impl Source for ConfigMapSource {
    fn origin(&self) -> String {
        self.target.to_string()
    }

    fn run(self: Box<Self>, publisher: Publisher) -> SourceFuture {
        Box::pin(follow(self.client, self.target, publisher))
    }
}

/// After an error, how long until the ConfigMap is read directly to confirm that the API
/// works again (doubling while it does not, up to [`RECHECK_MAX`]).
const RECHECK_FIRST: Duration = Duration::from_secs(1);
const RECHECK_MAX: Duration = Duration::from_secs(30);

async fn follow(client: Client, target: ConfigMapRef, publisher: Publisher) {
    let origin = target.to_string();
    let api: Api<ConfigMap> = Api::namespaced(client, &target.namespace);
    let selector = watcher::Config::default().fields(&format!("metadata.name={}", target.name));
    let mut events = std::pin::pin!(watcher(api.clone(), selector).default_backoff());
    // Whether the list in progress contained the ConfigMap: a list without it means the
    // map is gone (deleted while we were not watching).
    let mut listed = false;
    // A watch that resumes after an error says nothing until the ConfigMap changes, so
    // the error would stay in the status (and alerts on it would keep firing). After an
    // error the ConfigMap is therefore read once directly; success clears the error.
    let mut recheck: Option<Duration> = None;
    loop {
        let event = tokio::select! {
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
            () = tokio::time::sleep(recheck.unwrap_or_default()), if recheck.is_some() => {
                recheck = match api.get_opt(&target.name).await {
                    Ok(Some(object)) => {
                        load(&object, &target.key, &origin, &publisher);
                        None
                    }
                    Ok(None) => {
                        publisher.fail(&missing(&origin));
                        None
                    }
                    // Still failing: the watcher reports its own errors.
                    Err(_) => recheck.map(|after| (after * 2).min(RECHECK_MAX)),
                };
                continue;
            }
        };
        if event.is_ok() {
            recheck = None;
        }
        match event {
            Ok(Event::Init) => listed = false,
            Ok(Event::InitApply(object) | Event::Apply(object)) => {
                if object.metadata.name.as_deref() == Some(target.name.as_str()) {
                    listed = true;
                    load(&object, &target.key, &origin, &publisher);
                }
            }
            Ok(Event::InitDone) if !listed => publisher.fail(&missing(&origin)),
            Ok(Event::InitDone) => {}
            Ok(Event::Delete(_)) => publisher.fail(&LoadError::Source {
                origin: origin.clone(),
                message:
                    "the ConfigMap was deleted; keeping the last map until it is created again"
                        .to_owned(),
            }),
            Err(error) => {
                publisher.fail(&LoadError::Source {
                    origin: origin.clone(),
                    message: format!("Kubernetes API: {error}"),
                });
                recheck.get_or_insert(RECHECK_FIRST);
            }
        }
    }
}

fn load(object: &ConfigMap, key: &str, origin: &str, publisher: &Publisher) {
    match map_of(object, key, origin) {
        Ok(map) => {
            publisher.publish(map);
        }
        Err(error) => publisher.fail(&error),
    }
}

fn missing(origin: &str) -> LoadError {
    LoadError::Source {
        origin: origin.to_owned(),
        message: "the ConfigMap does not exist; keeping the last map until it is created"
            .to_owned(),
    }
}

/// The map under `key`, from `data` or, for maps applied as binary, `binaryData`.
fn map_of(object: &ConfigMap, key: &str, origin: &str) -> Result<RouteMap, LoadError> {
    let text = object.data.as_ref().and_then(|data| data.get(key));
    let binary = object.binary_data.as_ref().and_then(|data| data.get(key));
    let bytes = match (text, binary) {
        (Some(text), _) => text.as_bytes(),
        (None, Some(binary)) => binary.0.as_slice(),
        (None, None) => {
            let mut keys: Vec<&str> = object
                .data
                .iter()
                .flat_map(|d| d.keys())
                .chain(object.binary_data.iter().flat_map(|d| d.keys()))
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            return Err(LoadError::Source {
                origin: origin.to_owned(),
                message: format!(
                    "the ConfigMap has no key {key:?} (its keys: {}); keeping the last map",
                    if keys.is_empty() {
                        "none".to_owned()
                    } else {
                        keys.join(", ")
                    }
                ),
            });
        }
    };
    RouteMap::load(origin, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn configmap(data: &[(&str, &str)], binary: &[(&str, &[u8])]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            binary_data: Some(
                binary
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    const ORIGIN: &str = "configmap:ns/m#routemap";

    #[test]
    fn the_map_is_read_from_data_or_binary_data() {
        let text = configmap(&[("routemap", "10.0.0.1 www1\n")], &[]);
        assert_eq!(map_of(&text, "routemap", ORIGIN).unwrap().len(), 1);
        let binary = configmap(&[], &[("routemap", b"10.0.0.1 www1\n10.0.0.2 www2\n")]);
        assert_eq!(map_of(&binary, "routemap", ORIGIN).unwrap().len(), 2);
    }

    #[test]
    fn a_missing_key_names_the_keys_that_are_there() {
        let other = configmap(&[("routes", "10.0.0.1 www1\n"), ("README", "x")], &[]);
        let error = map_of(&other, "routemap", ORIGIN).unwrap_err().to_string();
        assert!(error.starts_with(ORIGIN), "{error}");
        assert!(
            error.contains("no key \"routemap\" (its keys: README, routes)"),
            "{error}"
        );
    }

    #[test]
    fn parse_errors_point_into_the_configmap_key() {
        let bad = configmap(&[("routemap", "10.0.0.1 www1\n10.0.0.2 www1\n")], &[]);
        let details = map_of(&bad, "routemap", ORIGIN).unwrap_err().details();
        assert!(
            details[0].starts_with("configmap:ns/m#routemap:2: "),
            "{details:?}"
        );
    }
}
