//! `--overrides-configmap NAMESPACE/NAME`: the override set in the `overrides.json` key of
//! a ConfigMap, followed by every proxy replica through the Kubernetes API.
//!
//! A change reads the ConfigMap, edits the set and replaces the object with the
//! `resourceVersion` it read (optimistic concurrency): when another replica wrote in
//! between, the API answers 409 Conflict and the change is made again on the fresh object,
//! so concurrent changes are all kept. Every replica follows the object with kube's
//! watcher (a list limited to the object's name, then a watch), as the route map source
//! does, so the Role needs `get`, `list`, `watch` and `update` on that one object; the
//! ConfigMap itself is created by the chart or kustomize (creating cannot be limited to
//! one name in RBAC). A set that cannot be read is reported and the last good one stays.

use super::store::{Followed, StoreError, StoreStatus, parse_set, render_set};
use super::{Edit, OverrideSet};
use crate::balancer::Balancer;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use std::sync::Arc;
use std::time::Duration;

use super::store::CONFIGMAP_KEY as KEY;

/// How often a change is made again after a conflict before it fails.
const ATTEMPTS: u32 = 8;

/// The deadline of each API call a change makes.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct ConfigMapStore {
    api: Api<ConfigMap>,
    name: String,
    place: String,
    followed: Followed,
    /// Becomes true when the first list is through.
    listed_once: tokio::sync::watch::Sender<bool>,
}

impl ConfigMapStore {
    pub fn new(client: Client, target: &routemap::source::ConfigMapRef) -> Self {
        let (namespace, name) = (&target.namespace, &target.name);
        Self {
            api: Api::namespaced(client, namespace),
            name: name.clone(),
            place: target.to_string(),
            followed: Followed::default(),
            listed_once: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Done when the follower's first list is through (its set applied, or its absence
    /// reported).
    pub fn first_read(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut listed = self.listed_once.subscribe();
        async move {
            let _ = listed.wait_for(|done| *done).await;
        }
    }

    pub fn status(&self) -> StoreStatus {
        self.followed.status(self.place.clone())
    }

    fn api_error(&self, error: impl std::fmt::Display) -> StoreError {
        StoreError::Read {
            place: self.place.clone(),
            message: format!("Kubernetes API: {error}"),
        }
    }

    /// Reads the ConfigMap as it is now.
    async fn fetch(&self) -> Result<ConfigMap, StoreError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.api.get_opt(&self.name)).await {
            Err(_) => Err(self.api_error(format!("no answer within {CALL_TIMEOUT:?}"))),
            Ok(Err(error)) => Err(self.api_error(error)),
            Ok(Ok(None)) => Err(StoreError::Missing {
                place: self.place.clone(),
            }),
            Ok(Ok(Some(object))) => Ok(object),
        }
    }

    fn set_of(&self, object: &ConfigMap) -> Result<OverrideSet, StoreError> {
        let text = object
            .data
            .as_ref()
            .and_then(|d| d.get(KEY))
            .map_or("", String::as_str);
        parse_set(text.as_bytes(), &self.place)
    }

    /// Makes `edit` in the stored set (again on the fresh object after each conflict) and
    /// applies the set written here.
    pub async fn change(&self, edit: &Edit, balancer: &Balancer) -> Result<(), StoreError> {
        for _ in 0..ATTEMPTS {
            let mut object = self.fetch().await?;
            let next = self.set_of(&object)?.edited(edit);
            object
                .data
                .get_or_insert_with(Default::default)
                .insert(KEY.to_owned(), render_set(&next));
            let replaced = tokio::time::timeout(
                CALL_TIMEOUT,
                self.api
                    .replace(&self.name, &PostParams::default(), &object),
            )
            .await;
            match replaced {
                Ok(Ok(_)) => {
                    self.followed.applied(&next, balancer, &self.place);
                    return Ok(());
                }
                Ok(Err(kube::Error::Api(status))) if status.code == 409 => {
                    self.followed.conflict();
                    tracing::info!(store = %self.place, "overrides changed by another replica meanwhile; making the change again");
                }
                Ok(Err(error)) => {
                    return Err(StoreError::Write {
                        place: self.place.clone(),
                        message: format!("Kubernetes API: {error}"),
                    });
                }
                Err(_) => {
                    return Err(StoreError::Write {
                        place: self.place.clone(),
                        message: format!("no answer within {CALL_TIMEOUT:?}"),
                    });
                }
            }
        }
        Err(StoreError::Conflict {
            place: self.place.clone(),
            attempts: ATTEMPTS,
        })
    }

    /// Follows the ConfigMap for the life of the process, applying every set read.
    pub async fn follow(self: Arc<Self>, balancer: Arc<Balancer>) {
        let selector = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut events = std::pin::pin!(watcher(self.api.clone(), selector).default_backoff());
        let mut listed = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => listed = false,
                Ok(Event::InitApply(object) | Event::Apply(object))
                    if object.metadata.name.as_deref() == Some(self.name.as_str()) =>
                {
                    listed = true;
                    match self.set_of(&object) {
                        Ok(set) => self.followed.applied(&set, &balancer, &self.place),
                        Err(error) => self.followed.failed(error.to_string()),
                    }
                }
                Ok(Event::InitDone) => {
                    if !listed {
                        self.followed.failed(
                            StoreError::Missing {
                                place: self.place.clone(),
                            }
                            .to_string(),
                        );
                    }
                    self.listed_once.send_replace(true);
                }
                Ok(Event::Delete(_)) => self.followed.failed(format!(
                    "{}: the ConfigMap was deleted; keeping the last overrides until it is created again",
                    self.place
                )),
                Ok(_) => {}
                Err(error) => self.followed.failed(self.api_error(error).to_string()),
            }
        }
    }
}
