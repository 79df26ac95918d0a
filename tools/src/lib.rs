//! Switchboard developer tools; see the binaries in src/bin.
