//! Where the binaries are told to read the map from, and starting the matching source.
//!
//! The ConfigMap reference is parsed and checked in every build, so the command line is the
//! same with or without the `kubernetes` feature; only starting it needs the feature.

use super::{FileSource, FileWatchOptions, SourceTask, spawn};
use crate::live::Live;
use std::fmt;
use std::path::PathBuf;

/// The key a ConfigMap holds the map under unless told otherwise.
pub const DEFAULT_CONFIGMAP_KEY: &str = "routemap";

/// One key of one ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

impl ConfigMapRef {
    /// Parses `NAMESPACE/NAME` and checks all three parts against Kubernetes' own naming
    /// rules, so a typo fails at start-up instead of as a watch that never finds anything.
    pub fn parse(object: &str, key: &str) -> Result<Self, String> {
        let (namespace, name) = object.split_once('/').ok_or_else(|| {
            format!("{object:?}: give the ConfigMap as NAMESPACE/NAME, e.g. default/routemap")
        })?;
        if !is_dns_label(namespace) {
            return Err(format!(
                "{object:?}: namespace {namespace:?} is not a valid Kubernetes namespace (lower-case letters, digits and '-', at most 63)"
            ));
        }
        if !is_dns_subdomain(name) {
            return Err(format!(
                "{object:?}: {name:?} is not a valid ConfigMap name (lower-case letters, digits, '-' and '.', at most 253)"
            ));
        }
        if !is_configmap_key(key) {
            return Err(format!(
                "ConfigMap key {key:?} is not valid (letters, digits, '-', '_' and '.', at most 253)"
            ));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
        })
    }
}

/// `configmap:NAMESPACE/NAME#KEY`: how the source is named in status, logs and errors.
impl fmt::Display for ConfigMapRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configmap:{}/{}#{}", self.namespace, self.name, self.key)
    }
}

/// A DNS label as Kubernetes names namespaces and Services: lower-case letters, digits and
/// `-`, at most 63, starting and ending with a letter or digit.
pub fn is_dns_label(text: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&text.len())
        && text.chars().all(|c| alnum(c) || c == '-')
        && text.starts_with(alnum)
        && text.ends_with(alnum)
}

fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

fn is_configmap_key(text: &str) -> bool {
    (1..=253).contains(&text.len())
        && text != "."
        && text != ".."
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Where the map comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapLocation {
    /// A file followed with `notify` (including a mounted ConfigMap volume).
    File(PathBuf),
    /// A ConfigMap key watched through the Kubernetes API.
    ConfigMap(ConfigMapRef),
}

impl fmt::Display for MapLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapLocation::File(path) => write!(f, "{}", path.display()),
            MapLocation::ConfigMap(target) => write!(f, "{target}"),
        }
    }
}

/// Why a source could not even start (a deployment mistake, reported at start-up).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "this build has no Kubernetes API support (built without the `kubernetes` feature); mount the ConfigMap as a directory and use --routemap instead"
    )]
    NoKubernetes,
    #[error(
        "cannot set up the Kubernetes client (KUBECONFIG, ~/.kube/config or the in-cluster service account): {0}"
    )]
    Kubernetes(String),
}

/// Starts following the map at `location`. Nothing is read yet when this returns: the
/// handle becomes ready with the first valid map (see [`Live::ready`]).
pub async fn start(
    location: &MapLocation,
    file_options: FileWatchOptions,
) -> Result<(Live, SourceTask), StartError> {
    match location {
        MapLocation::File(path) => Ok(spawn(FileSource::new(path).with_options(file_options))),
        #[cfg(feature = "kubernetes")]
        MapLocation::ConfigMap(target) => {
            let source = super::ConfigMapSource::connect(target.clone()).await?;
            Ok(spawn(source))
        }
        #[cfg(not(feature = "kubernetes"))]
        MapLocation::ConfigMap(_) => Err(StartError::NoKubernetes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configmap_is_named_namespace_slash_name() {
        let target = ConfigMapRef::parse("shop/route-map.v2", "routemap").unwrap();
        assert_eq!(target.to_string(), "configmap:shop/route-map.v2#routemap");
        assert_eq!(
            (target.namespace.as_str(), target.name.as_str()),
            ("shop", "route-map.v2")
        );
    }

    #[test]
    fn names_kubernetes_would_refuse_are_refused_at_start() {
        for bad in [
            "routemap",
            "/routemap",
            "shop/",
            "Shop/routemap",
            "shop/Route",
            "-x/y",
            "shop/a..b",
            "a/b/c",
        ] {
            assert!(
                ConfigMapRef::parse(bad, "routemap").is_err(),
                "{bad} accepted"
            );
        }
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(
                ConfigMapRef::parse("ns/name", bad).is_err(),
                "key {bad:?} accepted"
            );
        }
        assert!(ConfigMapRef::parse("ns/name", "route_map.txt").is_ok());
    }
}
