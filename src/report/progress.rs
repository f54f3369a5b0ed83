//! The progress handle a running node holds.

use std::sync::Arc;

use super::{Event, Reporter};

/// Reports one node's progress; cheap to clone.
#[derive(Clone)]
pub struct NodeProgress {
    node: String,
    reporter: Option<Arc<Reporter>>,
    total: Option<u64>,
    unit: String,
}

impl NodeProgress {
    /// A handle for `node` that sends to `reporter`.
    pub fn new(node: &str, reporter: Arc<Reporter>) -> NodeProgress {
        NodeProgress { node: node.into(), reporter: Some(reporter), total: None, unit: "items".into() }
    }

    /// A handle that reports nothing.
    pub fn silent(node: &str) -> NodeProgress {
        NodeProgress { node: node.into(), reporter: None, total: None, unit: "items".into() }
    }

    /// Sets the expected total and its unit ("records", "steps").
    pub fn start(&mut self, total: Option<u64>, unit: &str) {
        self.total = total;
        self.unit = unit.into();
        self.update(0, None);
    }

    /// [`start`](NodeProgress::start) for work that goes on from `done` (a resumed training),
    /// saying why in `message`.
    pub fn start_at(&mut self, total: Option<u64>, unit: &str, done: u64, message: String) {
        self.total = total;
        self.unit = unit.into();
        self.update(done, Some(message));
    }

    /// Reports `done` units so far, with an optional message (e.g. the loss).
    pub fn update(&self, done: u64, message: Option<String>) {
        if let Some(r) = &self.reporter {
            r.emit(Event::NodeProgress { node: self.node.clone(), done, total: self.total, unit: self.unit.clone(), message });
        }
    }
}
