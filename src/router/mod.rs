//! Routing of PUBLISH messages to subscribers: topic rules ([`topic`]) and the subscription
//! trie ([`trie`]).

pub mod topic;
pub mod trie;
