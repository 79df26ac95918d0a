//! The Salesforce sandbox: an HTTP server faithful to the parts of the Salesforce REST API a CTI
//! gateway uses (OAuth tokens, SOSL phone search, Task upserts, Contact and Lead creation, limits),
//! with a seeded org, the daily API allocation, fault injection and a control API. See
//! docs/salesforce-sandbox.md for the contract.
//!
//! - [`org`]: the pure model: every request's answer as data, time passed in.
//! - [`server`]: [`Sandbox`], the axum edge over one locked [`Org`].
//! - [`sosl`], [`phone`], [`auth`], [`ids`], [`schema`], [`seed`], [`faults`]: the rules it applies.

pub mod auth;
pub mod faults;
pub mod ids;
pub mod org;
pub mod phone;
pub mod schema;
pub mod seed;
pub mod server;
pub mod sosl;

pub use faults::{FaultSettings, InjectedFailure};
pub use org::{DataRequest, Org, Reply, SandboxConfig, SandboxError, SandboxStats, TaskRecord};
pub use phone::{NumberPlan, PhoneStyle};
pub use schema::ObjectKind;
pub use seed::{Record, Seeded};
pub use server::Sandbox;
