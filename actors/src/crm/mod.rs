//! The Salesforce side of the model: the budget actor that turns call events into screen pops and
//! call logs on a small share of the org's API allocation.
//!
//! - [`phone`]: which numbers are searched, and when two spellings are one number.
//! - [`lookup`]: search answers, their cache, and sharing one search among many numbers.
//! - [`task`]: the call log Task, with subject and description templates.
//! - [`budget`]: the pace (governor) and how the org's usage changes it.
//! - [`engine`]: every decision, pure.
//! - [`port`]: the CRM and the outbox as traits; the gateway implements them over HTTP and SQLite.
//! - [`actor`]: the actor that runs the engine.

pub mod actor;
pub mod budget;
pub mod engine;
pub mod lookup;
pub mod phone;
pub mod port;
pub mod task;
