//! sluice: an MQTT broker for IoT sensor ingestion whose acknowledged QoS 1 messages are
//! never lost.
//!
//! The data flow: `listener` accepts → `connection` (handshake, reader, writer) →
//! `session` registry → `router` (topic trie, retained) → each target session's queue →
//! the owning connection's writer. `broker` wires it together; `protocol` is the only
//! module that knows the wire format.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod ctl;
pub mod dead_letter;
pub mod delayed;
pub mod limits;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod protocol;
pub mod replay;
pub mod router;
pub mod session;
pub mod store;
pub mod sys;
pub mod wire;
