//! Switchboard's gateway: the edges between the phone system, the gateway's own model of it, and
//! the outside world. Today: configuration and the PBX link client.
//!
//! # Layout
//! - [`config`]: the typed configuration, from file, environment and flags.
//! - [`pbx`]: the PBX link client (connect, register, monitor, resync, heartbeats, reconnect) and its
//!   pure parts ([`pbx::sequencer`], [`pbx::Backoff`]).
//! - [`bridge`]: link events to model inputs ([`bridge::Translator`]), and the model's commands over
//!   the link ([`bridge::LinkPort`]).
//! - [`grpc`]: the gRPC API (CallControl, Agents, Events) over the model.
//! - [`metrics`]: every metric's name, the Prometheus exporter and the collector.
//! - [`cluster`]: several nodes sharing the lines through etcd: membership, ownership, fencing.
//! - [`app`]: the running gateway: starts the parts, and shuts them down in order.

pub mod app;
pub mod bridge;
pub mod cluster;
pub mod config;
pub mod grpc;
pub mod metrics;
pub mod pbx;
pub mod salesforce;
