//! The subscription trie: which subscriptions match a topic name. This is the router's hot
//! path, called once per PUBLISH; the router (`super`) owns one and keeps it in step with
//! SUBSCRIBE / UNSUBSCRIBE and session teardown.
//!
//! A filter is stored along its levels: one node per level, a literal level in the node's
//! `children` map, a `+` level in the node's dedicated `plus` child, and a trailing `#` in
//! the node's `multi` entry map rather than as a node of its own. The entries of a filter
//! that ends at a node (no trailing `#`) are in that node's `exact` map. Each entry map is
//! keyed by the subscriber key, so one (filter, key) pair is one entry.
//!
//! Matching walks `topic.split('/')` depth first, following at each node the child for the
//! literal level and the `+` child, and visiting every `multi` map on the way: `#` matches
//! zero or more trailing levels, so `a/#` matches `a`. It allocates nothing. The `$` rule of
//! [MQTT-4.7.2-1] is applied at the root: a topic whose first level starts with `$` skips the
//! root's `+` child and `#` entries.
//!
//! Filters handed to the trie must already be valid plain filters (see
//! [`super::topic::parse_filter`]; the caller strips a `$share/{group}/` prefix). The trie
//! stays consistent for any string, though: a `#` that is not the last level is stored as a
//! literal level, which no valid topic name can match.

use std::collections::HashMap;
use std::hash::Hash;
use std::str::Split;

/// One level of the trie.
#[derive(Debug)]
struct Node<K, V> {
    /// Children for literal levels (including the empty level).
    children: HashMap<Box<str>, Node<K, V>>,
    /// The child for a `+` level.
    plus: Option<Box<Node<K, V>>>,
    /// Entries of filters `<path to this node>/#` (`#` alone at the root).
    multi: HashMap<K, V>,
    /// Entries of filters that end exactly at this node.
    exact: HashMap<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            multi: HashMap::new(),
            exact: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.multi.is_empty()
            && self.exact.is_empty()
    }

    /// Removes the entry of `key` for the filter whose remaining levels are `levels`,
    /// pruning children left empty on the way back up.
    fn remove(&mut self, mut levels: Split<'_, char>, key: &K) -> Option<V> {
        let Some(level) = levels.next() else {
            return self.exact.remove(key);
        };
        if level == "#" && levels.clone().next().is_none() {
            return self.multi.remove(key);
        }
        if level == "+" {
            let child = self.plus.as_deref_mut()?;
            let removed = child.remove(levels, key);
            if child.is_empty() {
                self.plus = None;
            }
            removed
        } else {
            let child = self.children.get_mut(level)?;
            let removed = child.remove(levels, key);
            if child.is_empty() {
                self.children.remove(level);
            }
            removed
        }
    }

    /// Visits the entries below this node that match a topic whose levels after this node's
    /// path are `level` followed by `rest` (`level` is `None` when the topic ends here).
    fn walk<F: FnMut(&K, &V)>(&self, level: Option<&str>, rest: &Split<'_, char>, f: &mut F) {
        // `#` matches zero or more trailing levels, including none.
        for (k, v) in &self.multi {
            f(k, v);
        }
        match level {
            None => {
                for (k, v) in &self.exact {
                    f(k, v);
                }
            }
            Some(level) => self.descend(level, rest, f),
        }
    }

    /// Follows the literal child for `level` and the `+` child.
    fn descend<F: FnMut(&K, &V)>(&self, level: &str, rest: &Split<'_, char>, f: &mut F) {
        let mut after = rest.clone();
        let next = after.next();
        if let Some(child) = self.children.get(level) {
            child.walk(next, &after, f);
        }
        if let Some(child) = &self.plus {
            child.walk(next, &after, f);
        }
    }

    fn node_count(&self) -> usize {
        1 + self.children.values().map(Node::node_count).sum::<usize>()
            + self.plus.as_deref().map_or(0, Node::node_count)
    }
}

/// Subscriptions indexed by topic filter: a set of (filter, key) entries, each carrying a
/// value. `K` identifies a subscriber (e.g. a client id or session handle); `V` is the
/// subscription's data (QoS, options, identifier, ...).
#[derive(Debug)]
pub struct TopicTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

impl<K: Eq + Hash + Clone, V> Default for TopicTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone, V> TopicTrie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }

    /// Adds the entry (`filter`, `key`) with `value`. If that entry already existed its value
    /// is replaced and the old one returned (a re-SUBSCRIBE to the same filter replaces the
    /// subscription [MQTT-3.8.4-3]).
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut levels = filter.split('/');
        let old = loop {
            let Some(level) = levels.next() else {
                break node.exact.insert(key, value);
            };
            if level == "#" && levels.clone().next().is_none() {
                break node.multi.insert(key, value);
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else {
                // Subscribing is not the hot path: the key's allocation is fine here.
                node.children.entry(level.into()).or_default()
            };
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the entry (`filter`, `key`) and returns its value, pruning the nodes it leaves
    /// empty. `None` if there was no such entry.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let removed = self.root.remove(filter.split('/'), key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The value of the entry (`filter`, `key`), if any.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let mut node = &self.root;
        let mut levels = filter.split('/');
        loop {
            let Some(level) = levels.next() else {
                return node.exact.get(key);
            };
            if level == "#" && levels.clone().next().is_none() {
                return node.multi.get(key);
            }
            node = if level == "+" {
                node.plus.as_deref()?
            } else {
                node.children.get(level)?
            };
        }
    }

    /// Calls `f` for every entry whose filter matches the topic name `topic`, once per
    /// (filter, key) entry: a key subscribed through two overlapping filters is visited twice,
    /// and merging those is the caller's business. The order is unspecified. Allocates nothing.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&K, &V)) {
        let mut levels = topic.split('/');
        let Some(first) = levels.next() else {
            return;
        };
        let root = &self.root;
        if first.starts_with('$') {
            // [MQTT-4.7.2-1]: no `#` or `+` in the first level for `$` topics.
            if let Some(child) = root.children.get(first) {
                let mut after = levels.clone();
                let next = after.next();
                child.walk(next, &after, &mut f);
            }
        } else {
            root.walk(Some(first), &levels, &mut f);
        }
    }

    /// The number of (filter, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of nodes below the root, for memory diagnostics: 0 once every entry has
    /// been removed. Walks the whole trie.
    pub fn node_count(&self) -> usize {
        self.root.node_count() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::topic;
    use proptest::prelude::*;

    /// All (value, key) pairs visited for `topic`, sorted.
    fn matched(trie: &TopicTrie<u32, String>, topic: &str) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |k, v| out.push((v.clone(), *k)));
        out.sort();
        out
    }

    fn trie_of(filters: &[&str]) -> TopicTrie<u32, String> {
        let mut trie = TopicTrie::new();
        for (i, filter) in filters.iter().enumerate() {
            let key = u32::try_from(i).expect("few filters");
            assert_eq!(trie.insert(filter, key, (*filter).to_owned()), None);
        }
        trie
    }

    #[test]
    fn table() {
        let filters = [
            "#", "+", "+/+", "/", "/#", "a", "a/#", "a/+", "a/b", "a/+/c", "a//b", "+/b", "$SYS/#",
            "$SYS/+", "$SYS/x", "ü/+", "€/#",
        ];
        let trie = trie_of(&filters);
        assert_eq!(trie.len(), filters.len());
        let cases: &[(&str, &[&str])] = &[
            ("a", &["#", "+", "a", "a/#"]),
            ("a/b", &["#", "+/+", "+/b", "a/#", "a/+", "a/b"]),
            ("a/b/c", &["#", "a/#", "a/+/c"]),
            ("a//b", &["#", "a/#", "a//b"]),
            ("/", &["#", "+/+", "/", "/#"]),
            ("b/b", &["#", "+/+", "+/b"]),
            ("$SYS/x", &["$SYS/#", "$SYS/+", "$SYS/x"]),
            ("$SYS", &["$SYS/#"]),
            ("$other/b", &[]),
            ("ü/x", &["#", "+/+", "ü/+"]),
            ("€", &["#", "+", "€/#"]),
        ];
        for &(topic, want) in cases {
            let mut want: Vec<(String, u32)> = want
                .iter()
                .map(|f| {
                    let i = filters.iter().position(|x| x == f).expect("listed filter");
                    ((*f).to_owned(), u32::try_from(i).expect("few filters"))
                })
                .collect();
            want.sort();
            assert_eq!(matched(&trie, topic), want, "topic {topic:?}");
            // The reference matcher agrees with the table.
            for filter in filters {
                let listed = want.iter().any(|(f, _)| f == filter);
                assert_eq!(
                    topic::matches(filter, topic),
                    listed,
                    "{filter:?} vs {topic:?}"
                );
            }
        }
    }

    #[test]
    fn overlapping_filters_visit_a_key_once_per_filter() {
        let mut trie = TopicTrie::new();
        trie.insert("a/+", 7u32, "plus".to_owned());
        trie.insert("a/#", 7u32, "multi".to_owned());
        trie.insert("a/b", 8u32, "exact".to_owned());
        let mut seen = matched(&trie, "a/b");
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("exact".to_owned(), 8),
                ("multi".to_owned(), 7),
                ("plus".to_owned(), 7)
            ]
        );
    }

    #[test]
    fn replacement() {
        let mut trie = TopicTrie::new();
        assert_eq!(trie.insert("a/+", 1u32, 10u8), None);
        assert_eq!(trie.insert("a/+", 2u32, 20u8), None);
        assert_eq!(trie.insert("a/+", 1u32, 11u8), Some(10));
        assert_eq!(trie.insert("a/#", 1u32, 12u8), None);
        assert_eq!(trie.insert("#", 1u32, 13u8), None);
        assert_eq!(trie.insert("#", 1u32, 14u8), Some(13));
        assert_eq!(trie.len(), 4);
        assert_eq!(trie.get("a/+", &1), Some(&11));
        assert_eq!(trie.get("a/+", &2), Some(&20));
        assert_eq!(trie.get("a/#", &1), Some(&12));
        assert_eq!(trie.get("#", &1), Some(&14));
        assert_eq!(trie.get("a", &1), None);
        assert_eq!(trie.get("a/+", &3), None);
        assert_eq!(trie.get("b/+", &1), None);
        let mut seen = Vec::new();
        trie.for_each_match("a/x", |k, v| seen.push((*k, *v)));
        seen.sort();
        assert_eq!(seen, vec![(1, 11), (1, 12), (1, 14), (2, 20)]);
    }

    #[test]
    fn remove_prunes_everything() {
        let filters = [
            "#", "+", "+/+", "/", "/#", "a", "a/#", "a/+", "a/b", "a/+/c", "a//b", "$SYS/#", "ü/+",
        ];
        let mut trie = trie_of(&filters);
        assert!(trie.node_count() > 0);
        // Removing absent entries changes nothing.
        assert_eq!(trie.remove("a/b", &999), None);
        assert_eq!(trie.remove("x/y/z", &0), None);
        assert_eq!(trie.remove("a/+/#", &0), None);
        assert_eq!(trie.len(), filters.len());
        for (i, filter) in filters.iter().enumerate().rev() {
            let key = u32::try_from(i).expect("few filters");
            assert_eq!(trie.remove(filter, &key), Some((*filter).to_owned()));
            assert_eq!(trie.remove(filter, &key), None);
        }
        assert!(trie.is_empty());
        assert_eq!(trie.len(), 0);
        assert_eq!(trie.node_count(), 0);
        assert!(trie.root.is_empty());
        assert_eq!(matched(&trie, "a/b"), vec![]);
    }

    #[test]
    fn remove_keeps_siblings() {
        let mut trie = TopicTrie::new();
        trie.insert("a/b/c", 1u32, ());
        trie.insert("a/b", 2u32, ());
        trie.insert("a/+/c", 3u32, ());
        assert_eq!(trie.node_count(), 5); // a, a/b, a/b/c, a/+, a/+/c
        assert_eq!(trie.remove("a/b/c", &1), Some(()));
        assert_eq!(trie.node_count(), 4); // a/b still holds key 2
        assert_eq!(trie.get("a/b", &2), Some(&()));
        assert_eq!(trie.remove("a/b", &2), Some(()));
        assert_eq!(trie.node_count(), 3);
        assert_eq!(trie.remove("a/+/c", &3), Some(()));
        assert_eq!(trie.node_count(), 0);
    }

    #[test]
    fn invalid_hash_position_stays_consistent() {
        // Not a valid filter, but insert, get, remove and matching must still agree.
        let mut trie = TopicTrie::new();
        trie.insert("a/#/b", 1u32, ());
        assert_eq!(trie.get("a/#/b", &1), Some(&()));
        let mut n = 0;
        trie.for_each_match("a/x/b", |_, _| n += 1);
        assert_eq!(n, 0);
        assert_eq!(trie.remove("a/#/b", &1), Some(()));
        assert_eq!(trie.node_count(), 0);
    }

    const LEVELS: &[&str] = &["", "$x", "a", "b", "ü"];

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(LEVELS), 1..=4)
            .prop_map(|l| l.join("/"))
            .prop_filter("a topic name is not empty", |t| !t.is_empty())
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        let level = prop_oneof![
            3 => prop::sample::select(LEVELS),
            1 => Just("+"),
        ];
        (prop::collection::vec(level, 0..=4), any::<bool>()).prop_filter_map(
            "a filter is not empty",
            |(mut levels, multi)| {
                if multi {
                    levels.push("#");
                }
                let filter = levels.join("/");
                (!filter.is_empty()).then_some(filter)
            },
        )
    }

    /// The two cases proptest shrank to when the `$` rule and `a/#` matching `a` were
    /// broken on purpose.
    #[test]
    fn shrunk_regressions() {
        let mut t = TopicTrie::new();
        t.insert("#", 0u32, ());
        let mut n = 0;
        t.for_each_match("$x", |_, _| n += 1);
        assert_eq!(n, 0, "'#' must not match a '$' topic");
        let mut t = TopicTrie::new();
        t.insert("+/a/#", 0u32, ());
        let mut n = 0;
        t.for_each_match("/a", |_, _| n += 1);
        assert_eq!(n, 1, "'+/a/#' matches '/a'");
    }

    proptest! {
        // Failing seeds are kept next to this file (src/router/trie.regressions), not in
        // a top-level directory.
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
            )),
            ..ProptestConfig::default()
        })]

        #[test]
        fn agrees_with_reference_matcher(
            entries in prop::collection::vec((filter_strategy(), 0u32..3), 0..24),
            topics in prop::collection::vec(topic_strategy(), 1..8),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut trie = TopicTrie::new();
            let mut reference: Vec<(String, u32)> = Vec::new();
            for (filter, key) in &entries {
                prop_assert_eq!(topic::validate_filter(filter, 16), Ok(()));
                let old = trie.insert(filter, *key, filter.clone());
                let existed = reference.contains(&(filter.clone(), *key));
                prop_assert_eq!(old.is_some(), existed);
                if !existed {
                    reference.push((filter.clone(), *key));
                }
            }
            prop_assert_eq!(trie.len(), reference.len());
            let check = |trie: &TopicTrie<u32, String>, reference: &[(String, u32)]| {
                for topic in &topics {
                    let mut want: Vec<(String, u32)> = reference
                        .iter()
                        .filter(|(f, _)| topic::matches(f, topic))
                        .cloned()
                        .collect();
                    want.sort();
                    prop_assert_eq!(matched(trie, topic), want, "topic {:?}", topic);
                }
                Ok(())
            };
            check(&trie, &reference)?;
            for index in &removals {
                if reference.is_empty() {
                    break;
                }
                let (filter, key) = reference.swap_remove(index.index(reference.len()));
                prop_assert_eq!(trie.remove(&filter, &key), Some(filter.clone()));
                prop_assert_eq!(trie.get(&filter, &key), None);
            }
            prop_assert_eq!(trie.len(), reference.len());
            check(&trie, &reference)?;
            for (filter, key) in std::mem::take(&mut reference) {
                prop_assert_eq!(trie.remove(&filter, &key), Some(filter.clone()));
            }
            prop_assert!(trie.is_empty());
            prop_assert_eq!(trie.node_count(), 0);
        }
    }
}
