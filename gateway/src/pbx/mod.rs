//! The gateway's side of the PBX link: one task owns the connection, registers, monitors every
//! configured device, resyncs from snapshots, keeps heartbeats, and reconnects when the link dies.
//!
//! Callers hold a cheap [`LinkHandle`] to send requests; whoever mirrors the phone system (the line
//! and call actors) reads the ordered stream of [`LinkEvent`]s.

mod backoff;
mod link;
pub mod sequencer;

pub use backoff::Backoff;
pub use link::{
    EventSender, LinkError, LinkEvent, LinkEvents, LinkHandle, LinkStats, LinkStatus, MAX_BURST, MAX_SNAPSHOT_PAGES,
    PROTOCOL_VERSION, ReconnectReason, event_channel, start, start_selective,
};
