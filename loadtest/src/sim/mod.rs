//! The PBX simulator: a phone system with a PBX link, seeded traffic and fault injection.

pub mod faults;
pub mod inspect;
pub mod model;
pub mod server;
pub mod traffic;

pub use faults::FaultSettings;
pub use inspect::StateDump;
pub use model::{FinishedLeg, Layout, Pbx, PbxEvent, ServiceError};
pub use server::{SimConfig, SimStats, Simulator};
pub use traffic::TrafficConfig;
