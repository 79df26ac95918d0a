//! Switchboard's end-to-end tests, one binary: real servers on loopback, port 0.
//!
//! - `cluster`: three gateways and a real etcd sharing one simulator's lines: spread, failover,
//!   joins, self-fencing when cut off from etcd, and requests and event streams from any node.
//! - `dashboards`: the Grafana dashboards' conventions; promtool checks and unit-tests the rules.
//! - `grpc`: the gRPC API over real sockets: call control, agents, events, status codes.
//! - `link`: the gateway's PBX link client against the simulator: resync, reconnect, heartbeats,
//!   deadlines, congestion, event faults.
//! - `link_pages`: snapshots larger than one frame, in pages: a queue of a thousand calls mirrored
//!   whole, a client's smaller frame limit, and broken or overlong page sequences refused.
//! - `model`: the whole gateway mirroring the simulator through faults; commands through the model.
//! - `salesforce_sandbox`: the Salesforce sandbox over HTTP: OAuth, search, upserts, sessions, the
//!   allocation and injected faults.
//! - `sim_link`: the simulator's link server against a raw client: registration, malformed and
//!   oversized frames, every service over the wire.
//! - `tidy`: house rules on the source tree.

mod cluster;
mod dashboards;
mod grpc;
mod link;
mod link_pages;
mod model;
mod salesforce;
mod salesforce_sandbox;
mod sim_link;
mod support;
mod tidy;
