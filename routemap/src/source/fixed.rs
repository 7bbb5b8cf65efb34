//! A map that never changes: for tests and for setups without a central map.

use super::{Source, SourceFuture};
use crate::live::Publisher;
use crate::map::RouteMap;

pub struct FixedSource {
    map: RouteMap,
    origin: String,
}

impl FixedSource {
    pub fn new(map: RouteMap) -> Self {
        Self {
            map,
            origin: "fixed".to_owned(),
        }
    }

    /// Names where the map came from, for status and logs.
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }
}

impl Source for FixedSource {
    fn origin(&self) -> String {
        self.origin.clone()
    }

    fn run(self: Box<Self>, publisher: Publisher) -> SourceFuture {
        Box::pin(async move {
            publisher.publish(self.map);
        })
    }
}
