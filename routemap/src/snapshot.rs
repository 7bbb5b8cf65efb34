//! What consumers hold: one published version of the map.

use crate::map::RouteMap;
use std::ops::Deref;
use std::time::SystemTime;

/// An immutable, published route map. Shared as `Arc<Snapshot>`; a consumer that took one
/// keeps using it for as long as it needs (a request in flight finishes on the map it
/// started with) while newer ones are published.
#[derive(Debug)]
pub struct Snapshot {
    map: RouteMap,
    generation: u64,
    loaded_at: SystemTime,
}

impl Snapshot {
    /// `generation` counts publications of one [`crate::Live`] handle, from 1.
    pub fn new(map: RouteMap, generation: u64, loaded_at: SystemTime) -> Self {
        Self {
            map,
            generation,
            loaded_at,
        }
    }

    pub fn map(&self) -> &RouteMap {
        &self.map
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }
}

impl Deref for Snapshot {
    type Target = RouteMap;

    fn deref(&self) -> &RouteMap {
        &self.map
    }
}
