//! sluice: an MQTT broker for IoT sensor ingestion whose acknowledged QoS 1 messages are
//! never lost. See README.md for the map of modules and the data flow.
#![forbid(unsafe_code)]

pub mod protocol;
pub mod store;
