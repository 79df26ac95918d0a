//! Switchboard's test peers and load tools: the PBX simulator, the reference model of a phone
//! system that the gateway's tests and demo run against; the Salesforce sandbox; and the loadtest.
//!
//! # Layout
//! - [`sim::model`]: the phone system itself, pure: devices, calls, connections, ACD queue, park orbits.
//! - [`sim::server`]: the PBX link listener around it: registration, heartbeats, monitors, events, faults.
//! - [`sim::traffic`]: the seeded contact-center day that drives it.
//! - [`sim::faults`]: the link faults the simulator can inject.
//! - [`sim::inspect`]: the comparable picture of its state that tests and `pbx-sim` expose.
//! - [`salesforce`]: the Salesforce sandbox (REST API peer with a seeded org, limits and faults).
//! - [`etcd`]: a throwaway single-member etcd for cluster tests and the failover measurement.
//! - [`load`]: the loadtest (`switchboard-loadtest`): a seeded day against the `switchboard` binary.

pub mod etcd;
pub mod load;
pub mod salesforce;
pub mod sim;
