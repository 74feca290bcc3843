//! What the other nodes are subscribed to, as they announce it in the cluster's
//! interest bucket: one key per (node, filter), valued durable or not.
//!
//! The origin of a message uses it to decide which nodes must have the message on their
//! durable queue before the PUBACK, which node's member of a shared group takes it, and
//! whether anybody at all in the cluster wanted it (the `no_subscribers` dead letter).
//! Fan-out itself does not depend on it: NATS routes each message by subject to the nodes
//! subscribed, so a subscription is served the moment its node has told NATS.

use crate::router::topic::{parse_filter, FilterKind};
use crate::router::trie::TopicTrie;
use std::collections::HashMap;
use std::sync::Arc;

/// Subscriptions of other nodes, matched like local ones.
#[derive(Debug, Default)]
pub struct RemoteInterest {
    trie: TopicTrie<(Arc<str>, Arc<str>), bool>,
    /// Filters held per node, so the nodes with interest can be listed.
    per_node: HashMap<Arc<str>, usize>,
}

/// Who elsewhere wants a topic.
#[derive(Debug, Default, PartialEq)]
pub struct RemoteMatches {
    /// Nodes with a plain subscription matching, and whether one of them is durable.
    pub plain: Vec<(Arc<str>, bool)>,
    /// Shared groups (`$share/group/filter`) with their member nodes.
    pub shared: HashMap<Arc<str>, Vec<(Arc<str>, bool)>>,
}

impl RemoteMatches {
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_empty()
    }
}

fn trie_filter(filter: &str) -> Option<&str> {
    match parse_filter(filter, usize::MAX) {
        Ok(FilterKind::Plain(f)) | Ok(FilterKind::Shared { filter: f, .. }) => Some(f),
        Err(_) => None,
    }
}

impl RemoteInterest {
    pub fn set(&mut self, node: &str, filter: &str, durable: bool) {
        if let Some(f) = trie_filter(filter) {
            let node: Arc<str> = Arc::from(node);
            let old = self
                .trie
                .insert(f, (Arc::clone(&node), Arc::from(filter)), durable);
            if old.is_none() {
                *self.per_node.entry(node).or_default() += 1;
            }
        }
    }

    pub fn remove(&mut self, node: &str, filter: &str) {
        if let Some(f) = trie_filter(filter) {
            let node: Arc<str> = Arc::from(node);
            if self
                .trie
                .remove(f, &(Arc::clone(&node), Arc::from(filter)))
                .is_some()
            {
                if let Some(n) = self.per_node.get_mut(&node) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_node.remove(&node);
                    }
                }
            }
        }
    }

    /// The other nodes that hold subscriptions, with how many filters each, by name.
    pub fn nodes(&self) -> Vec<(String, usize)> {
        let mut nodes: Vec<(String, usize)> = self
            .per_node
            .iter()
            .map(|(n, c)| (n.to_string(), *c))
            .collect();
        nodes.sort();
        nodes
    }

    pub fn len(&self) -> usize {
        self.trie.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    pub fn matches(&self, topic: &str) -> RemoteMatches {
        let mut m = RemoteMatches::default();
        self.trie.for_each_match(topic, |(node, filter), &durable| {
            if filter.starts_with("$share/") {
                let members = m.shared.entry(Arc::clone(filter)).or_default();
                match members.iter_mut().find(|(n, _)| n == node) {
                    Some((_, d)) => *d |= durable,
                    None => members.push((Arc::clone(node), durable)),
                }
            } else {
                match m.plain.iter_mut().find(|(n, _)| n == node) {
                    Some((_, d)) => *d |= durable,
                    None => m.plain.push((Arc::clone(node), durable)),
                }
            }
        });
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_merge_per_node_and_keep_groups_apart() {
        let mut r = RemoteInterest::default();
        r.set("b", "s/+/t", false);
        r.set("b", "s/#", true);
        r.set("c", "s/1/t", false);
        r.set("c", "$share/g/s/+/t", true);
        r.set("b", "$share/g/s/+/t", false);
        r.set("b", "other", true);
        let m = r.matches("s/1/t");
        let mut plain = m.plain.clone();
        plain.sort();
        assert_eq!(plain, vec![(Arc::from("b"), true), (Arc::from("c"), false)]);
        let mut g = m.shared[&Arc::from("$share/g/s/+/t")].clone();
        g.sort();
        assert_eq!(g, vec![(Arc::from("b"), false), (Arc::from("c"), true)]);
        r.remove("b", "s/#");
        assert_eq!(
            r.matches("s/1/t").plain.iter().filter(|(_, d)| *d).count(),
            0
        );
        assert!(
            r.matches("$SYS/x").is_empty(),
            "wildcards never match $ topics"
        );
    }
}
