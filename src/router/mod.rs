//! Routing of PUBLISH messages to subscribers: topic rules ([`topic`]).

pub mod topic;
