//! The bridge between the PBX link and the model: it translates link events into model inputs, and
//! carries the model's commands out over the link. The only place that knows both vocabularies.

mod port;
mod translate;

pub use port::LinkPort;
pub use translate::{Directory, Translator};
