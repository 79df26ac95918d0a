//! The org model's tests.
