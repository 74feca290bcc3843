//! Retained messages, indexed by topic level so a new subscription finds its matches by
//! walking only the branches its filter can reach (a `+` visits every child of one node,
//! a `#` a whole subtree), instead of testing every retained topic.
//!
//! Owned by the router; callers hold the router's lock around it.

use crate::message::Message;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.message.is_none() && self.children.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct RetainedStore {
    root: Node,
    len: usize,
}

impl RetainedStore {
    /// Sets the retained message for its topic, replacing any before it.
    pub fn insert(&mut self, message: Arc<Message>) {
        let mut node = &mut self.root;
        for level in message.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(message).is_none() {
            self.len += 1;
        }
    }

    /// Clears the retained message of `topic`, pruning empty branches.
    pub fn remove(&mut self, topic: &str) -> bool {
        fn walk<'a>(node: &mut Node, mut levels: impl Iterator<Item = &'a str>) -> bool {
            match levels.next() {
                None => node.message.take().is_some(),
                Some(level) => {
                    let Some(child) = node.children.get_mut(level) else {
                        return false;
                    };
                    let removed = walk(child, levels);
                    if child.is_empty() {
                        node.children.remove(level);
                    }
                    removed
                }
            }
        }
        let removed = walk(&mut self.root, topic.split('/'));
        if removed {
            self.len -= 1;
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every retained message whose topic matches the (plain, valid) `filter`.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        let levels: Vec<&str> = filter.split('/').collect();
        collect(&self.root, &levels, true, &mut out);
        out
    }
}

fn collect(node: &Node, levels: &[&str], at_root: bool, out: &mut Vec<Arc<Message>>) {
    let Some((&level, rest)) = levels.split_first() else {
        out.extend(node.message.iter().cloned());
        return;
    };
    // A filter starting with a wildcard never matches a topic starting with '$'
    // [MQTT-4.7.2-1].
    let visible = |name: &str| !(at_root && name.starts_with('$'));
    match level {
        "#" => {
            // `a/#` also matches `a` itself.
            if !at_root {
                out.extend(node.message.iter().cloned());
            }
            for (name, child) in &node.children {
                if visible(name) {
                    subtree(child, out);
                }
            }
        }
        "+" => {
            for (name, child) in &node.children {
                if visible(name) {
                    collect(child, rest, false, out);
                }
            }
        }
        literal => {
            if let Some(child) = node.children.get(literal) {
                collect(child, rest, false, out);
            }
        }
    }
}

fn subtree(node: &Node, out: &mut Vec<Arc<Message>>) {
    out.extend(node.message.iter().cloned());
    for child in node.children.values() {
        subtree(child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageProperties, QoS};
    use crate::router::topic::matches;
    use bytes::Bytes;

    fn msg(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            id: 0,
            topic: topic.into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: MessageProperties::default(),
            publisher: Arc::from("p"),
            received_at_ms: 0,
            expires_at_ms: None,
        })
    }

    const TOPICS: &[&str] = &[
        "a", "a/b", "a/b/c", "a//c", "/", "/a", "$SYS/x", "$SYS/x/y", "b/ü", "a/b/c/d",
    ];
    const FILTERS: &[&str] = &[
        "#",
        "+",
        "a/#",
        "a/+",
        "a/+/c",
        "+/+",
        "/#",
        "+/b/#",
        "$SYS/#",
        "$SYS/+",
        "a//c",
        "b/ü",
        "+/ü",
        "a/b/c/d/#",
        "x/#",
    ];

    #[test]
    fn agrees_with_the_reference_matcher() {
        let mut store = RetainedStore::default();
        for t in TOPICS {
            store.insert(msg(t));
        }
        assert_eq!(store.len(), TOPICS.len());
        for f in FILTERS {
            let mut got: Vec<String> = store.matching(f).iter().map(|m| m.topic.clone()).collect();
            got.sort();
            let mut want: Vec<String> = TOPICS
                .iter()
                .filter(|t| matches(f, t))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            assert_eq!(got, want, "filter {f}");
        }
    }

    #[test]
    fn replace_and_remove_prune() {
        let mut store = RetainedStore::default();
        store.insert(msg("a/b"));
        store.insert(msg("a/b"));
        assert_eq!(store.len(), 1);
        assert!(store.remove("a/b"));
        assert!(!store.remove("a/b"));
        assert!(store.is_empty());
        assert!(store.root.children.is_empty(), "branches pruned");
    }
}
