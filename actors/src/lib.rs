//! Switchboard's live model of the phone system: one state machine per agent line and per call.
//!
//! # Layout
//! - [`domain`]: the model's vocabulary: connection states, agent states, presence, directions, outcomes.
//! - [`call`]: [`call::CallState`], one call's parties, timeline and agent legs, and the call log
//!   records it yields when it ends. Pure.
//! - [`line`]: [`line::LineState`], one agent line's agent, presence and calls, and the checks a
//!   command must pass before it is sent to the PBX. Pure.
//! - [`events`]: the numbered, fanned-out stream of model changes, with history for resuming.
//! - [`port`]: [`port::PbxPort`], the trait through which the model asks things of the PBX.
//! - [`crm`]: the Salesforce budget actor: screen pops and call logs on a small API budget.
//! - [`runtime`]: the actors (one per line, one per call), their supervisor, the router that feeds
//!   them, and the [`runtime::Model`] handle for commands and queries.
//!
//! This crate knows nothing of sockets, protobuf, tonic or HTTP: the gateway translates the PBX
//! link's events into [`runtime::ModelInput`]s and implements [`port::PbxPort`].

pub mod call;
pub mod crm;
pub mod domain;
pub mod events;
pub mod line;
pub mod port;
pub mod runtime;
