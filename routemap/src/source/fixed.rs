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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::spawn;

    #[tokio::test]
    async fn a_fixed_map_is_ready_at_once_and_never_changes() {
        let map = RouteMap::parse(b"10.0.0.1 www1\n").unwrap();
        let hash = map.hash().to_owned();
        let (live, _task) = spawn(FixedSource::new(map));
        tokio::time::timeout(std::time::Duration::from_secs(5), live.ready())
            .await
            .unwrap();
        let status = live.status();
        assert_eq!((status.source.as_str(), status.generation), ("fixed", 1));
        assert_eq!(live.load().unwrap().hash(), hash);
    }
}
