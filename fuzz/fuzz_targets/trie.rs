//! The subscription trie against the reference matcher `topic::matches`.
//!
//! Input: lines of text, each an operation on a trie and a model of it (a map from
//! (filter, key) to value). The first character picks the operation, the second the
//! subscriber key (so keys collide and re-subscribes happen), the rest is the argument:
//! * `+`: insert the filter (only valid plain filters, as the router guarantees);
//! * `-`: remove the filter;
//! * anything else: match the topic name, compared with the model where it is valid.
//!
//! At the end every entry is removed: the trie must be empty with no nodes left.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use sluice::router::topic::{matches, parse_filter, validate_topic_name, FilterKind};
use sluice::router::trie::TopicTrie;

const MAX_LEVELS: usize = 32;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut trie: TopicTrie<u8, u32> = TopicTrie::new();
    let mut model: BTreeMap<(String, u8), u32> = BTreeMap::new();
    for (n, line) in text.split('\n').enumerate().take(256) {
        let mut chars = line.chars();
        let Some(op) = chars.next() else { continue };
        let key = chars.next().map_or(0, |c| (c as u32 % 4) as u8);
        let arg = chars.as_str();
        let value = n as u32;
        match op {
            '+' | '-' => {
                let Ok(FilterKind::Plain(filter)) = parse_filter(arg, MAX_LEVELS) else {
                    continue;
                };
                if op == '+' {
                    let old = trie.insert(filter, key, value);
                    assert_eq!(old, model.insert((filter.to_owned(), key), value));
                } else {
                    let old = trie.remove(filter, &key);
                    assert_eq!(old, model.remove(&(filter.to_owned(), key)));
                }
                assert_eq!(trie.get(filter, &key), model.get(&(filter.to_owned(), key)));
                assert_eq!(trie.len(), model.len());
            }
            _ => {
                let mut got = Vec::new();
                trie.for_each_match(arg, |k, v| got.push((*k, *v)));
                if validate_topic_name(arg, MAX_LEVELS).is_err() {
                    continue;
                }
                got.sort_unstable();
                let mut want: Vec<(u8, u32)> = model
                    .iter()
                    .filter(|((f, _), _)| matches(f, arg))
                    .map(|((_, k), v)| (*k, *v))
                    .collect();
                want.sort_unstable();
                assert_eq!(got, want, "matches for topic {arg:?}");
            }
        }
    }
    for (filter, key) in model.keys() {
        assert!(trie.remove(filter, key).is_some(), "lost {filter:?}/{key}");
    }
    assert!(trie.is_empty());
    assert_eq!(trie.node_count(), 0, "nodes left after removing everything");
});
