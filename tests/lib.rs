//! Switchboard end-to-end tests; everything lives in the `it` test binary.
