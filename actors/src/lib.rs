//! Switchboard's live model of the phone system: one state machine per agent line and per call.
//!
//! # Layout
//! - [`domain`]: the model's vocabulary: connection states, agent states, presence, directions, outcomes.
//! - [`call`]: [`call::CallState`], one call's parties, timeline and agent legs, and the call log
//!   records it yields when it ends. Pure.
//! - [`line`]: [`line::LineState`], one agent line's agent, presence and calls, and the checks a
//!   command must pass before it is sent to the PBX. Pure.
//!
//! This crate knows nothing of sockets, protobuf, tonic or HTTP: the gateway translates the PBX
//! link's events into [`call::CallInput`]s and [`line::LineInput`]s.

pub mod call;
pub mod domain;
pub mod line;
